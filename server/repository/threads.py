"""The repository's ``intra_op_threads`` option: torch's CPU thread pool size."""

from __future__ import annotations

import logging

import torch

log = logging.getLogger(__name__)


def set_intra_op_threads(threads: int | None) -> None:
    """``torch.set_num_threads(threads)`` (process-wide); None keeps torch's default."""
    if threads is None:
        log.info("intra-op threads: torch default (%d)", torch.get_num_threads())
        return
    if threads < 1:
        raise ValueError(f"intra_op_threads must be >= 1 or None, got {threads}")
    torch.set_num_threads(threads)
    log.info("intra-op threads: %d (torch.set_num_threads)", threads)
