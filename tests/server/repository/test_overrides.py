"""Load-request overrides (server/repository/overrides.py) and ModelRepository.discover_override,
over real folders in tmp_path: parameter checks, the JSON config, the private model folder."""

from __future__ import annotations

import json
import os
import stat
import tempfile
from pathlib import Path

import pytest
from repository_test_helpers import write_model

from batchwire.core.errors import ModelLoadError, ModelNameError
from batchwire.server.repository import ModelRepository
from batchwire.server.repository.overrides import (
    LoadOverrides,
    OverrideError,
    parse_config_json,
    parse_load_parameters,
    remove_override_folder,
    write_override_files,
    write_override_folder,
)

SOURCE = b"""
class BatchwireModel:
    def execute(self, inputs):
        return {"Y": inputs["X"]}
"""

CONFIG = {
    "backend": "python",
    "max_batch_size": 4,
    "input": [{"name": "X", "data_type": "TYPE_FP32", "dims": [1]}],
    "output": [{"name": "Y", "data_type": "TYPE_FP32", "dims": [1]}],
}

CONFIG_PBTXT = """
    backend: "python"
    max_batch_size: 4
    input [ { name: "X", data_type: TYPE_FP32, dims: [ 1 ] } ]
    output [ { name: "Y", data_type: TYPE_FP32, dims: [ 1 ] } ]
"""


def config_json(**changes: object) -> str:
    return json.dumps({**CONFIG, **changes})


def refused(parameters: dict[str, object]) -> str:
    with pytest.raises(OverrideError) as err:
        parse_load_parameters(parameters)
    return str(err.value)


# -- parameters -----------------------------------------------------------------------


def test_no_parameters_mean_no_override() -> None:
    assert not parse_load_parameters(None)
    assert not parse_load_parameters({})
    overrides = parse_load_parameters({"config": "{}", "file:2/sub/model.py": b"x"})
    assert overrides == LoadOverrides("{}", {"2/sub/model.py": b"x"})
    assert overrides


def test_unknown_parameters_are_refused_naming_the_accepted_ones() -> None:
    accepted = "(expected 'config' (string) and 'file:<version>/<path>' (bytes))"
    assert refused({"unload_dependents": True}) == (
        f"Unrecognized load parameter 'unload_dependents' with type 'BOOL' {accepted}"
    )
    assert refused({"Config": "{}"}) == (
        f"Unrecognized load parameter 'Config' with type 'STRING' {accepted}"
    )
    assert refused({"x": None}) == f"Unrecognized load parameter 'x' with type 'NONE' {accepted}"


def test_parameter_types_are_checked() -> None:
    assert refused({"config": b"{}"}) == (
        "Config parameter 'config' must have string type for its value (got BYTES)"
    )
    assert refused({"config": "{}", "file:1/model.py": 7}) == (
        "File parameter 'file:1/model.py' must have bytes type for its value (got INT)"
    )


@pytest.mark.parametrize(
    ("key", "problem"),
    [
        ("file:", "the path is empty"),
        ("file:/abs/model.py", "the path is absolute"),
        ("file:../model.py", "no '', '.' or '..'"),
        ("file:1/../../model.py", "no '', '.' or '..'"),
        ("file:1/./model.py", "no '', '.' or '..'"),
        ("file:1//model.py", "no '', '.' or '..'"),
        ("file:1/", "no '', '.' or '..'"),
        ("file:1\\..\\model.py", "the path contains a backslash"),
        ("file:1/mo\0del.py", "the path contains a NUL character"),
        ("file:1", "expected file:<version>/<path>"),
        ("file:config.pbtxt", "expected file:<version>/<path>"),
        ("file:0/model.py", "expected file:<version>/<path>"),
        ("file:01/model.py", "expected file:<version>/<path>"),
        ("file:-1/model.py", "expected file:<version>/<path>"),
    ],
)
def test_file_paths_must_be_version_and_path_inside_the_folder(key: str, problem: str) -> None:
    message = refused({"config": "{}", key: b""})
    assert message.startswith(f"Invalid file parameter '{key}': "), message
    assert problem in message
    assert message.endswith("; it must stay within the model directory")


def test_file_overrides_need_the_config() -> None:
    assert refused({"file:1/model.py": SOURCE}) == (
        "Load parameter 'config' must be specified for model file override"
    )


def test_a_file_may_not_be_another_files_folder() -> None:
    assert refused({"config": "{}", "file:1/a": b"", "file:1/a/b/c": b""}) == (
        "Invalid file parameter 'file:1/a/b/c', directory has been created as a file ('file:1/a')"
    )


# -- the JSON config ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", "Failed to load JSON: Expecting value: line 1 column 1 (char 0)"),
        ('{"name": }', "Failed to load JSON: Expecting value: line 1 column 10 (char 9)"),
        ('"name"', "expected a JSON object (a ModelConfig), got str"),
        ("null", "expected a JSON object (a ModelConfig), got NoneType"),
        (
            '{"inputs": []}',
            'Message type "inference.ModelConfig" has no field named "inputs" at "ModelConfig".',
        ),
        (
            '{"input": [{"data_type": "FLOAT"}]}',
            "Failed to parse input field: Failed to parse data_type field: Invalid enum value "
            "FLOAT for enum type inference.DataType at ModelConfig.input[0].data_type..",
        ),
    ],
)
def test_json_that_is_not_a_model_config_is_refused_in_one_line(text: str, expected: str) -> None:
    with pytest.raises(OverrideError) as err:
        parse_config_json(text)
    assert str(err.value) == f"Invalid config override: {expected}"


def test_json_field_names_may_be_proto_or_json_style() -> None:
    config = parse_config_json('{"max_batch_size": 3, "versionPolicy": {"all": {}}}')
    assert config.max_batch_size == 3
    assert config.version_policy.WhichOneof("policy_choice") == "all"


# -- the private folder ---------------------------------------------------------------


def test_the_private_folder_is_private_and_removed_whole(tmp_path: Path) -> None:
    model_dir = write_override_folder("m", {"1/model.py": SOURCE, "2/sub/data.bin": b"\0\1"})
    top = model_dir.parent
    try:
        assert model_dir.name == "m"
        assert top.name.startswith(f"batchwire-{os.getpid()}-override-")
        for folder in (top, model_dir, model_dir / "1", model_dir / "2" / "sub"):
            assert stat.S_IMODE(folder.stat().st_mode) == 0o700, folder
        assert (model_dir / "1" / "model.py").read_bytes() == SOURCE
        assert stat.S_IMODE((model_dir / "1" / "model.py").stat().st_mode) == 0o600
        assert (model_dir / "2" / "sub" / "data.bin").read_bytes() == b"\0\1"
    finally:
        remove_override_folder(model_dir)
    assert not top.exists()
    # Only folders it made: anything else is left alone.
    other = tmp_path / "keep" / "m"
    other.mkdir(parents=True)
    remove_override_folder(other)
    assert other.exists()


def test_nothing_is_written_through_a_link(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    model_dir = tmp_path / "m"
    model_dir.mkdir()
    os.symlink(outside, model_dir / "1")
    with pytest.raises(OverrideError) as err:
        write_override_files(model_dir, {"1/model.py": SOURCE})
    assert str(err.value) == (
        f"Invalid file parameter 'file:1/model.py' with normalized path "
        f"'{outside.resolve() / 'model.py'}' must stay within model directory."
    )
    (model_dir / "2").mkdir()
    target = outside / "victim"
    target.write_bytes(b"untouched")
    os.symlink(target, model_dir / "2" / "model.py")
    with pytest.raises(OverrideError, match="exists already"):
        write_override_files(model_dir, {"2/model.py": SOURCE})
    assert target.read_bytes() == b"untouched"
    assert list(outside.iterdir()) == [target]


# -- discover_override ----------------------------------------------------------------


def test_a_config_override_reads_the_repository_folder_with_another_config(
    tmp_path: Path,
) -> None:
    write_model(tmp_path, "m", CONFIG_PBTXT, {"1/model.py": SOURCE, "2/model.py": SOURCE})
    repository = ModelRepository(tmp_path)
    entry = repository.discover_override(
        "m", LoadOverrides(config_json(max_batch_size=2, version_policy={"all": {}}))
    )
    assert entry.workdir is None and entry.path == tmp_path / "m"
    assert [v.version for v in entry.versions] == ["1", "2"]
    config = entry.versions[0].config
    # Filled exactly as a config.pbtxt would be.
    assert (config.name, config.backend, config.default_model_filename) == (
        "m",
        "python",
        "model.py",
    )
    assert config.max_batch_size == 2 and entry.versions[0].spec.max_batch_size == 2
    assert len(config.instance_group) == 1 and config.instance_group[0].count == 1
    # The config.pbtxt itself is left as it was.
    assert repository.discover_model("m").versions[0].config.max_batch_size == 4


def test_file_overrides_make_a_model_of_their_own(tmp_path: Path) -> None:
    write_model(tmp_path, "m", CONFIG_PBTXT, {"1/model.py": SOURCE})
    repository = ModelRepository(tmp_path)
    overrides = LoadOverrides(config_json(), {"3/model.py": SOURCE})
    for name in ("m", "new"):  # in the repository or not
        entry = repository.discover_override(name, overrides)
        try:
            assert entry.workdir is not None and entry.path == entry.workdir
            assert entry.path.name == name and entry.path.parent.parent != tmp_path
            assert [v.version for v in entry.versions] == ["3"]  # only what was sent
            assert entry.versions[0].model_file.read_bytes() == SOURCE
        finally:
            remove_override_folder(entry.workdir)


def test_a_bad_override_leaves_no_folder_behind(tmp_path: Path) -> None:
    repository = ModelRepository(tmp_path)
    before = set(Path(tempfile.gettempdir()).glob(f"batchwire-{os.getpid()}-*"))

    def refusal(overrides: LoadOverrides) -> str:
        with pytest.raises(OverrideError) as err:
            repository.discover_override("m", overrides)
        return str(err.value)

    assert refusal(LoadOverrides(config_json(max_batch_size=-1), {"1/model.py": SOURCE})) == (
        "Invalid config override: max_batch_size: must be >= 0, got -1"
    )
    message = refusal(LoadOverrides(config_json(), {"1/other.py": SOURCE}))
    assert message.startswith("Invalid config override: ") and "model file not found" in message
    assert refusal(LoadOverrides("{", {"1/model.py": SOURCE})).startswith(
        "Invalid config override: Failed to load JSON"
    )
    after = set(Path(tempfile.gettempdir()).glob(f"batchwire-{os.getpid()}-*"))
    assert after == before


def test_names_are_checked_before_anything_is_written(tmp_path: Path) -> None:
    repository = ModelRepository(tmp_path)
    with pytest.raises(ModelNameError, match="it contains a path separator"):
        repository.discover_override("../m", LoadOverrides(config_json(), {"1/model.py": SOURCE}))
    # A config override alone needs the model's folder in the repository.
    with pytest.raises(ModelLoadError, match="model folder not found"):
        repository.discover_override("m", LoadOverrides(config_json()))
