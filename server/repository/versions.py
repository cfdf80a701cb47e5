"""Which version folders of a model to serve, per its ``version_policy``.

A version is a sub-folder named by a positive integer (``1/``, ``2/`` ...), as
in Triton. Other entries (``warmup/``, ``labels.txt``, ``0/``, ``01/``) are
not versions and are skipped.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from pathlib import Path

from batchwire.protos import model_config_pb2 as mc
from batchwire.server.repository.errors import load_error, one_of

log = logging.getLogger(__name__)

# Canonical positive integers only: "01" would name version 1 with a folder that
# is not "1", and the folder name is how a version is found again on reload.
_VERSION_NAME = re.compile(r"[1-9][0-9]*")


def available_versions(model_dir: Path) -> dict[int, Path]:
    """Version number -> folder for every positive-integer sub-folder of ``model_dir``."""
    found: dict[int, Path] = {}
    for entry in sorted(model_dir.iterdir()):
        if not entry.is_dir():
            continue
        if _VERSION_NAME.fullmatch(entry.name):
            found[int(entry.name)] = entry
        else:
            log.debug("%s: ignoring folder '%s' (not a version number)", model_dir, entry.name)
    return found


def select_versions(
    policy: mc.ModelVersionPolicy, available: Mapping[int, Path], config_path: object
) -> list[int]:
    """The versions to serve, ascending; raises ModelLoadError when none can be served."""
    if not available:
        raise load_error(
            config_path,
            "version folders",
            "no version folder found (expected a positive integer folder such as 1/ "
            "holding the model file)",
        )
    choice = policy.WhichOneof("policy_choice")
    if choice == "all":
        return sorted(available)
    if choice == "specific":
        wanted = sorted(set(policy.specific.versions))
        if not wanted:
            raise load_error(
                config_path,
                "version_policy.specific.versions",
                "is empty (expected at least one version number)",
            )
        missing = [v for v in wanted if v not in available]
        if missing:
            raise load_error(
                config_path,
                "version_policy.specific.versions",
                f"version(s) {one_of(missing)} have no folder "
                f"(expected one of {one_of(sorted(available))})",
            )
        return wanted
    # latest (also the default when no policy is set: the newest version only)
    count = policy.latest.num_versions if choice == "latest" else 1
    if count < 1:
        raise load_error(
            config_path,
            "version_policy.latest.num_versions",
            f"must be >= 1, got {count}",
        )
    return sorted(available)[-count:]
