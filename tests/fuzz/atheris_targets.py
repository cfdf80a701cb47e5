"""Coverage-guided fuzzing (atheris, libFuzzer) of request decoding and config parsing.

Usage, from the repository root::

    python tests/fuzz/atheris_targets.py seed DIR
    python tests/fuzz/atheris_targets.py decode|config [libFuzzer flags] [corpus folders]

``seed`` writes starting corpora (``DIR/decode``: requests drawn by the strategy of
tests/server/hostile_requests.py; ``DIR/config``: a few valid configs) and
``DIR/config.dict``. ``decode`` and ``config`` fuzz the targets of
:mod:`fuzz_targets` (see its docstring for what counts as a failure); the first
corpus folder also receives the new inputs that reach new code. The config target
gets :func:`fuzz_targets.config_dictionary` as its ``-dict`` unless one is given.
The batchwire modules and protobuf's text format parser are instrumented for
coverage, nothing else (torch is too large to instrument usefully).

libFuzzer's flags pass through: ``-runs=N`` and ``-max_total_time=S`` bound a run,
``-timeout=S`` turns one input running longer into a reported hang, ``-artifact_prefix=DIR/``
says where a failing input is saved, ``-jobs=N -workers=N`` run several processes. A
run that finds nothing exits 0; a failure prints the input's traceback, saves the
input and exits non-zero; ``python tests/fuzz/atheris_targets.py config CRASH_FILE``
replays one.

The repository's loggers are silenced: every refused config logs an error, which
would otherwise be most of the output.
"""

from __future__ import annotations

import atexit
import logging
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

# atheris ships no type information.
import atheris  # type: ignore[import-untyped,import-not-found,unused-ignore]

with atheris.instrument_imports(include=["batchwire", "google.protobuf.text_format"]):
    import fuzz_targets


def _run(target: Callable[[bytes], None], argv: list[str]) -> None:
    logging.disable(logging.CRITICAL)
    atheris.Setup(argv, target)
    atheris.Fuzz()


def main_decode(argv: list[str]) -> None:
    """Fuzz ModelInferRequest decoding; ``argv``: libFuzzer's, program name first."""
    _run(fuzz_targets.decode, argv)


def main_config(argv: list[str]) -> None:
    """Fuzz config.pbtxt parsing; ``argv``: libFuzzer's, program name first."""
    if not any(arg.startswith("-dict=") for arg in argv):
        folder = Path(tempfile.mkdtemp(prefix="fuzz-dict-"))
        atexit.register(shutil.rmtree, folder, True)
        path = fuzz_targets.write_dictionary(folder / "config.dict")
        argv = [argv[0], f"-dict={path}", *argv[1:]]
    _run(fuzz_targets.config, argv)


def main_seed(argv: list[str]) -> None:
    """Write the starting corpora into ``argv[1]`` (see the module docstring)."""
    if len(argv) != 2:
        sys.exit(f"usage: {argv[0]} seed DIR")
    for target, corpus in fuzz_targets.write_corpus(Path(argv[1])).items():
        print(f"{target}: {sum(1 for _ in corpus.iterdir())} inputs in {corpus}")


MAINS = {"decode": main_decode, "config": main_config, "seed": main_seed}


def main() -> None:
    """``atheris_targets.py decode|config|seed ...``: run one command."""
    if len(sys.argv) < 2 or sys.argv[1] not in MAINS:
        sys.exit(f"usage: {sys.argv[0]} {'|'.join(MAINS)} [libFuzzer flags] [corpus folders]")
    MAINS[sys.argv[1]]([sys.argv[0], *sys.argv[2:]])


if __name__ == "__main__":
    main()
