"""Version folders and version_policy."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from batchwire.core.errors import ModelLoadError
from batchwire.protos import model_config_pb2 as mc
from batchwire.server.repository import available_versions, select_versions


def _model_dir(tmp_path: Path, folders: list[str]) -> Path:
    model_dir = tmp_path / "m"
    for folder in folders:
        (model_dir / folder).mkdir(parents=True)
    (model_dir / "config.pbtxt").write_text("")
    (model_dir / "7").write_text("a file, not a version folder")
    return model_dir


def _policy(text: str) -> mc.ModelVersionPolicy:
    from google.protobuf import text_format

    return text_format.Parse(text, mc.ModelVersionPolicy())


def test_only_positive_integer_folders_are_versions(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    model_dir = _model_dir(tmp_path, ["1", "3", "10", "0", "01", "warmup", "v2"])
    with caplog.at_level(logging.DEBUG, logger="batchwire.server.repository.versions"):
        found = available_versions(model_dir)
    assert found == {1: model_dir / "1", 3: model_dir / "3", 10: model_dir / "10"}
    ignored = " ".join(r.getMessage() for r in caplog.records if r.levelno == logging.DEBUG)
    for name in ("'0'", "'01'", "'warmup'", "'v2'"):
        assert name in ignored


@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        ("", [10]),  # no policy: latest 1
        ("latest { num_versions: 1 }", [10]),
        ("latest { num_versions: 2 }", [3, 10]),
        ("latest { num_versions: 9 }", [1, 3, 10]),
        ("all { }", [1, 3, 10]),
        ("specific { versions: [ 3, 1 ] }", [1, 3]),
    ],
)
def test_policies(tmp_path: Path, policy: str, expected: list[int]) -> None:
    available = available_versions(_model_dir(tmp_path, ["1", "3", "10"]))
    assert select_versions(_policy(policy), available, "cfg") == expected


def test_specific_version_missing_is_named(tmp_path: Path) -> None:
    available = available_versions(_model_dir(tmp_path, ["1", "3"]))
    with pytest.raises(ModelLoadError) as info:
        select_versions(_policy("specific { versions: [ 1, 4 ] }"), available, "m/config.pbtxt")
    message = str(info.value)
    assert message.startswith("m/config.pbtxt: version_policy.specific.versions: ")
    assert "version(s) 4 have no folder" in message
    assert "expected one of 1, 3" in message


def test_latest_zero_is_an_error(tmp_path: Path) -> None:
    available = available_versions(_model_dir(tmp_path, ["1"]))
    with pytest.raises(ModelLoadError, match=r"latest\.num_versions: must be >= 1, got 0"):
        select_versions(_policy("latest { num_versions: 0 }"), available, "cfg")


def test_no_versions_is_an_error(tmp_path: Path) -> None:
    available = available_versions(_model_dir(tmp_path, ["warmup"]))
    with pytest.raises(ModelLoadError, match="no version folder found"):
        select_versions(_policy(""), available, "cfg")
