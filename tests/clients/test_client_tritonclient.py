"""First contact as users have it: the README's tritonclient snippet, in the server's venv
and in a venv of its own; the torch-free client install; imports of the client side.

``scripts/test.sh`` makes the helper venvs and names their interpreters in
``BATCHWIRE_TRITONCLIENT_PYTHON`` (the newest ``tritonclient[grpc]`` alone) and
``BATCHWIRE_CLIENT_PYTHON`` (``pip install batchwire``: no torch, no server extra).
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from testsupport import REPO_ROOT, require_component

from batchwire.serve_process import ServerProcess

README = REPO_ROOT / "README.md"

#: Modules that only the server needs: the client side must never import them.
SERVER_ONLY = (
    "torch",
    "batchwire.server.app",
    "batchwire.server.servicer",
    "batchwire.server.registry",
    "batchwire.batching",
    # The trace settings' one declaration (telemetry/trace_config.py) is light and feeds
    # `serve --help`; the tracing, metrics and export machinery is not.
    "batchwire.telemetry.tracing",
    "batchwire.telemetry.metrics",
    "batchwire.telemetry.span_export",
    "opentelemetry",
    "prometheus_client",
)


def readme_tritonclient_snippet() -> str:
    """The README's first Python block that uses tritonclient."""
    for block in re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S):
        if "import tritonclient.grpc" in block:
            return block
    raise AssertionError("README.md has no ```python block importing tritonclient.grpc")


def _run_snippet(python: str, address: str) -> subprocess.CompletedProcess[str]:
    snippet = readme_tritonclient_snippet()
    assert "127.0.0.1:8001" in snippet, "the README snippet should name the default address"
    return subprocess.run(
        [python, "-c", snippet.replace("127.0.0.1:8001", address)],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_readme_snippet_answers_same_venv(examples_process: ServerProcess) -> None:
    """tritonclient installed beside batchwire (pip picks the newest) answers the snippet."""
    require_component(
        importlib.util.find_spec("tritonclient") is not None, "tritonclient is not installed"
    )
    result = _run_snippet(sys.executable, examples_process.address)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "(2, 10)"


def test_readme_snippet_answers_own_venv(examples_process: ServerProcess) -> None:
    """The newest tritonclient in a venv of its own answers the snippet."""
    python = os.environ.get("BATCHWIRE_TRITONCLIENT_PYTHON", "")
    require_component(bool(python), "BATCHWIRE_TRITONCLIENT_PYTHON is not set")
    result = _run_snippet(python, examples_process.address)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "(2, 10)"
    version = subprocess.run(
        [python, "-c", "import importlib.metadata as m; print(m.version('tritonclient'))"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert tuple(int(p) for p in version.split(".")[:2]) >= (2, 73), version


def test_tritonclient_shared_memory_helpers_import_and_round_trip() -> None:
    """Triton's shared-memory helpers import with the tritonclient we test against.

    tritonclient 2.41 (what pip picked before batchwire allowed protobuf 6) imported
    ``pkg_resources`` there, which current setuptools no longer ships.
    """
    require_component(
        importlib.util.find_spec("tritonclient") is not None, "tritonclient is not installed"
    )
    import numpy as np
    import tritonclient.utils.shared_memory as shm

    data = np.arange(12, dtype=np.float32).reshape(3, 4)
    key = f"/batchwire-test-{os.getpid()}"
    handle = shm.create_shared_memory_region("test_region", key, data.nbytes)
    try:
        shm.set_shared_memory_region(handle, [data])
        back = shm.get_contents_as_numpy(handle, np.float32, [3, 4])
        np.testing.assert_array_equal(back, data)
    finally:
        shm.destroy_shared_memory_region(handle)


def _imported_by(python: str, code: str) -> list[str]:
    """Run ``code`` in a fresh interpreter; return the SERVER_ONLY modules it imported."""
    probe = (
        "import sys\n"
        f"{code}\n"
        f"bad = sorted(m for m in sys.modules if m.startswith({SERVER_ONLY!r}))\n"
        "print('server-only modules:', ','.join(bad))\n"
    )
    result = subprocess.run([python, "-c", probe], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    last = result.stdout.strip().splitlines()[-1]
    assert last.startswith("server-only modules:"), result.stdout
    return [m for m in last.removeprefix("server-only modules:").strip().split(",") if m]


@pytest.mark.parametrize(
    "code",
    [
        "import batchwire.clients",
        "import batchwire.clients.aio",
        "import batchwire.clients.cli",
        "import batchwire.loadtest.cli",
        # `batchwire --help`, `batchwire infer --help` and `batchwire loadtest --help`.
        *(
            "from batchwire.server.cli import main\n"
            f"sys.argv = ['batchwire', {', '.join(repr(a) for a in args)}]\n"
            "try:\n    main()\nexcept SystemExit as exit:\n    assert not exit.code, exit.code"
            for args in (("--help",), ("infer", "--help"), ("loadtest", "--help"))
        ),
    ],
    ids=["clients", "clients.aio", "clients.cli", "loadtest.cli", "help", "infer", "loadtest"],
)
def test_client_side_imports_no_torch_and_no_server(code: str) -> None:
    assert _imported_by(sys.executable, code) == []


def test_client_only_install_infers_without_torch(examples_process: ServerProcess) -> None:
    """``pip install batchwire`` (no extras) is a working client with no torch installed."""
    python = os.environ.get("BATCHWIRE_CLIENT_PYTHON", "")
    require_component(bool(python), "BATCHWIRE_CLIENT_PYTHON is not set")
    missing = subprocess.run(
        [python, "-c", "import importlib.util as u; print(u.find_spec('torch') is None)"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert missing.stdout.strip() == "True", "the client venv should not have torch"
    code = (
        "import numpy as np\n"
        "from batchwire.clients import InferenceClient\n"
        f"with InferenceClient({examples_process.address!r}) as client:\n"
        "    out = client.infer('text', {'TOKENS': np.array([[5, 17, 42]], dtype=np.int64)})\n"
        "    print(out.outputs['EMBEDDING'].shape)\n"
    )
    assert _imported_by(python, code) == []
    result = subprocess.run([python, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "(1, 32)"
    cli = Path(python).parent / "batchwire"
    infer = subprocess.run(
        [str(cli), "infer", "--url", examples_process.address, "--model", "mlp", "--random"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert infer.returncode == 0, infer.stderr
    assert "OUTPUT__0" in infer.stdout


def test_serve_without_the_server_extra_says_what_to_install() -> None:
    python = os.environ.get("BATCHWIRE_CLIENT_PYTHON", "")
    require_component(bool(python), "BATCHWIRE_CLIENT_PYTHON is not set")
    cli = Path(python).parent / "batchwire"
    result = subprocess.run(
        [str(cli), "serve", "--port", "0"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "pip install 'batchwire[server]'" in lines[0]
