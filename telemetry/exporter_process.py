"""The span exporter process the server starts: ``python -m batchwire.telemetry.exporter_process``.

It reads span records on stdin and exports their spans (see
:mod:`batchwire.telemetry.span_export`); it is not meant to be run by hand.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys

from batchwire.telemetry.span_export import serve_exporter


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ack-fd", type=int, required=True, help="pipe for flush answers")
    ns = parser.parse_args(argv)
    # The server stops this process after a last flush; Ctrl-C in its terminal must not.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    logging.basicConfig(
        level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    with os.fdopen(ns.ack_fd, "wb") as acks:
        serve_exporter(sys.stdin.buffer, acks)


if __name__ == "__main__":
    main()
