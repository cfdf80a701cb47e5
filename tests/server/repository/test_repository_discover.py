"""ModelRepository.discover / discover_model / load over a folder of models."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from repository_test_helpers import JIT_DEPRECATION, save_script, write_model

from batchwire.core.errors import ModelLoadError
from batchwire.server.repository import ModelRepository

pytestmark = pytest.mark.filterwarnings(JIT_DEPRECATION)

CONFIG = """
    max_batch_size: 4
    input [ { name: "INPUT__0", data_type: TYPE_FP32, dims: [ 2 ] } ]
    output [ { name: "OUTPUT__0", data_type: TYPE_FP32, dims: [ 2 ] } ]
"""


class Double(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * 2


def _good(root: Path, name: str, versions: tuple[str, ...] = ("1",), extra: str = "") -> Path:
    model_dir = write_model(root, name, CONFIG + extra)
    for version in versions:
        save_script(Double(), model_dir / version / "model.pt")
    return model_dir


def test_broken_model_does_not_hide_the_others(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    _good(tmp_path, "b_good")
    _good(tmp_path, "a_multi", ("1", "2", "3"), "version_policy { latest { num_versions: 2 } }\n")
    write_model(
        tmp_path, "c_broken", CONFIG.replace("TYPE_FP32", "TYPE_INVALID", 1), {"1/model.pt": b""}
    )
    write_model(tmp_path, "d_noconfig", None, {"1/model.pt": b""})
    (tmp_path / ".hidden").mkdir()
    (tmp_path / "README.md").write_text("not a model")

    with caplog.at_level(logging.INFO, logger="batchwire.server.repository"):
        entries = ModelRepository(tmp_path).discover()

    assert [e.name for e in entries] == ["a_multi", "b_good", "c_broken", "d_noconfig"]
    multi, good, broken, noconfig = entries
    assert multi.ok and [v.version for v in multi.versions] == ["2", "3"]
    assert all(v.spec.version == v.version for v in multi.versions)
    assert multi.versions[0].path == tmp_path / "a_multi" / "2"
    assert multi.versions[0].model_file == tmp_path / "a_multi" / "2" / "model.pt"
    assert multi.versions[0].config.name == "a_multi"
    assert good.ok and good.versions[0].spec.name == "b_good"
    assert not broken.ok and not broken.versions
    assert "c_broken/config.pbtxt: input 'INPUT__0': data_type TYPE_INVALID" in broken.error
    assert not noconfig.ok and "d_noconfig/config.pbtxt: file not found" in noconfig.error

    logged = caplog.text
    assert "4 model(s) found, 2 ok, 2 failed" in logged
    assert "model 'c_broken' failed" in logged

    repo = ModelRepository(tmp_path)
    runner = repo.load(good.versions[0]).create_runner(torch.device("cpu"), 0)
    torch.testing.assert_close(
        runner({"INPUT__0": torch.ones(1, 2)})["OUTPUT__0"], 2 * torch.ones(1, 2)
    )


def test_discover_model_reloads_one_model(tmp_path: Path) -> None:
    model_dir = _good(tmp_path, "m")
    repo = ModelRepository(tmp_path)
    assert [v.version for v in repo.discover_model("m").versions] == ["1"]
    save_script(Double(), model_dir / "2" / "model.pt")
    assert [v.version for v in repo.discover_model("m").versions] == ["2"]

    unknown = repo.discover_model("nope")
    assert not unknown.ok
    assert unknown.error == f"{tmp_path / 'nope'}: model folder not found"
    assert not repo.discover_model("../m").ok


def test_missing_model_file_in_a_version(tmp_path: Path) -> None:
    _good(tmp_path, "m", ("1",), "version_policy { all { } }\n")
    (tmp_path / "m" / "2").mkdir()
    entry = ModelRepository(tmp_path).discover_model("m")
    assert not entry.ok
    assert entry.error.startswith(f"{tmp_path / 'm' / '2' / 'model.pt'}: model file not found")


def test_load_names_the_file(tmp_path: Path) -> None:
    model_dir = _good(tmp_path, "m")
    repo = ModelRepository(tmp_path)
    source = repo.discover_model("m").versions[0]
    (model_dir / "1" / "model.pt").write_bytes(b"\x00" * 10)
    with pytest.raises(ModelLoadError) as info:
        repo.load(source)
    assert str(info.value).startswith(f"{model_dir / '1' / 'model.pt'}: ")


def test_missing_root(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="model repository folder not found"):
        ModelRepository(tmp_path / "absent").discover()
