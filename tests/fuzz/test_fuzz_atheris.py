"""The bounded coverage-guided fuzz run of CI: each atheris target for a fixed time.

Each target (:mod:`fuzz_targets`: ModelInferRequest decoding, config.pbtxt parsing)
runs in its own process through ``atheris_targets.py`` for :data:`SECONDS` seconds,
from the seed corpora of ``atheris_targets.py seed``, with libFuzzer's random seed
fixed (:data:`SEED`): CI repeats the same mutations, so a red run is a regression
that replays, not a new find of chance (finding new inputs is the long run's job);
an input running longer than :data:`INPUT_TIMEOUT` seconds is a hang. The test passes when libFuzzer finishes its
time without a failure, and otherwise shows the failing input's traceback. The
longer run is documented in docs/reliability.md ("Fuzzing").
"""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest
from testsupport import REPO_ROOT, require_component

pytestmark = pytest.mark.slow

RUNNER = Path(__file__).with_name("atheris_targets.py")
#: Fuzzing time per target, in seconds.
SECONDS = 35
#: libFuzzer's -seed: the same mutation sequence in every CI run.
SEED = 20261207
#: One input running longer than this is reported as a hang.
INPUT_TIMEOUT = 20


@pytest.fixture(scope="module")
def corpora(tmp_path_factory: pytest.TempPathFactory) -> Path:
    require_component(
        importlib.util.find_spec("atheris") is not None,
        "atheris is not installed (pip install atheris; Linux, Python 3.10 to 3.13)",
    )
    folder = tmp_path_factory.mktemp("fuzz-corpora")
    subprocess.run(
        [sys.executable, str(RUNNER), "seed", str(folder)],
        cwd=REPO_ROOT,
        check=True,
        capture_output=True,
        timeout=120,
    )
    return folder


@pytest.mark.parametrize("target", ["decode", "config"])
def test_the_target_runs_its_time_without_a_failure(
    corpora: Path, tmp_path: Path, target: str
) -> None:
    command = [
        sys.executable,
        str(RUNNER),
        target,
        f"-max_total_time={SECONDS}",
        f"-seed={SEED}",
        f"-timeout={INPUT_TIMEOUT}",
        f"-artifact_prefix={tmp_path}/",
        str(corpora / target),
    ]
    done = subprocess.run(
        command,
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=SECONDS + 120,
    )
    output = done.stdout + done.stderr
    # Progress lines are most of the output; the failure report is at the end.
    tail = "\n".join(output.splitlines()[-60:])
    saved = sorted(p.name for p in tmp_path.iterdir())
    assert done.returncode == 0, f"{target} failed (inputs saved: {saved}):\n{tail}"
    runs = re.search(r"Done (\d+) runs", output)
    assert runs is not None and int(runs.group(1)) > 0, tail
