"""config.pbtxt parsing, Triton defaults, conversion to ModelSpec, and error messages."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from repository_test_helpers import write_model

from batchwire.core.errors import ModelLoadError
from batchwire.core.spec import DEFAULT_INLINE_BELOW_US, DeviceKind, TimeoutAction
from batchwire.server.repository import Format, config_to_spec, load_config

MLP = """
    max_batch_size: 8
    input [ { name: "INPUT__0", data_type: TYPE_FP32, dims: [ 4 ] } ]
    output [ { name: "OUTPUT__0", data_type: TYPE_FP32, dims: [ 2 ] } ]
"""


def _load(tmp_path: Path, config: str, files: dict | None = None, name: str = "mlp"):
    files = {"1/model.pt": b""} if files is None else files
    model_dir = write_model(tmp_path / "models", name, config, files)
    return model_dir, *load_config(model_dir)


def test_defaults_are_filled_like_triton(tmp_path: Path) -> None:
    model_dir, config, fmt = _load(tmp_path, MLP)
    assert fmt is Format.TORCHSCRIPT
    assert config.name == "mlp"
    assert config.platform == "pytorch_libtorch"
    assert config.backend == "pytorch"
    assert config.default_model_filename == "model.pt"
    assert config.version_policy.WhichOneof("policy_choice") == "latest"
    assert config.version_policy.latest.num_versions == 1
    assert len(config.instance_group) == 1
    assert config.instance_group[0].name == "mlp_0"
    assert config.instance_group[0].count == 1

    spec = config_to_spec(config, fmt, "1", model_dir, model_dir / "config.pbtxt")
    assert spec.name == "mlp"
    assert spec.version == "1"
    assert spec.platform == "pytorch_libtorch"
    assert spec.max_batch_size == 8
    assert spec.inputs[0].datatype == "FP32"
    assert spec.inputs[0].dims == (4,)
    assert spec.batching is None  # no dynamic_batching: each request runs alone
    assert spec.instance_groups[0].kind is DeviceKind.AUTO


@pytest.mark.parametrize(
    ("files", "expected_format", "platform", "backend"),
    [
        ({"1/model.pt2": b""}, Format.TORCH_EXPORT, "torch_export", "pytorch"),
        ({"1/model.py": ""}, Format.PYTHON, "", "python"),
        ({"2/model.pt": b"", "notes": b""}, Format.TORCHSCRIPT, "pytorch_libtorch", "pytorch"),
    ],
)
def test_format_is_inferred_from_files(
    tmp_path: Path, files: dict, expected_format: Format, platform: str, backend: str
) -> None:
    _, config, fmt = _load(tmp_path, MLP, files)
    assert fmt is expected_format
    assert (config.platform, config.backend) == (platform, backend)
    assert config.default_model_filename == expected_format.default_filename


def test_backend_pytorch_with_pt2_file_is_torch_export(tmp_path: Path) -> None:
    _, config, fmt = _load(tmp_path, 'backend: "pytorch"\n' + MLP, {"1/model.pt2": b""})
    assert fmt is Format.TORCH_EXPORT
    assert config.platform == "torch_export"


def test_default_model_filename_decides_the_format(tmp_path: Path) -> None:
    config_text = 'default_model_filename: "net.pt2"\n' + MLP
    _, config, fmt = _load(tmp_path, config_text, {"1/net.pt2": b""})
    assert fmt is Format.TORCH_EXPORT
    assert config.default_model_filename == "net.pt2"


def test_full_config_converts_to_spec(tmp_path: Path) -> None:
    config_text = """
        name: "full"
        platform: "pytorch_libtorch"
        max_batch_size: 16
        input [
          { name: "IMAGE", data_type: TYPE_FP16, dims: [ 4 ], reshape: { shape: [ 2, 2 ] } },
          { name: "MASK", data_type: TYPE_BOOL, dims: [ -1 ], allow_ragged_batch: true, optional: true }
        ]
        output [ { name: "SCORES", data_type: TYPE_BF16, dims: [ 1 ], reshape: { shape: [ ] } } ]
        dynamic_batching {
          preferred_batch_size: [ 4, 8 ]
          max_queue_delay_microseconds: 300
          preserve_ordering: true
          priority_levels: 3
          default_priority_level: 2
          default_queue_policy { timeout_action: DELAY, default_timeout_microseconds: 50, max_queue_size: 7 }
          priority_queue_policy {
            key: 1
            value: { allow_timeout_override: true, max_queue_size: 2 }
          }
        }
        instance_group [
          { kind: KIND_CPU, count: 2 },
          { kind: KIND_GPU, gpus: [ 0, 1 ] },
          { kind: KIND_MODEL }
        ]
        model_warmup [
          {
            name: "zeros"
            batch_size: 4
            inputs { key: "IMAGE", value: { data_type: TYPE_FP16, dims: [ 4 ], zero_data: true } }
          },
          {
            name: "file"
            batch_size: 1
            count: 3
            inputs { key: "IMAGE", value: { data_type: TYPE_FP16, dims: [ 4 ], input_data_file: "img.bin" } }
          }
        ]
        parameters { key: "batchwire.adaptive_delay", value: { string_value: "false" } }
        parameters { key: "batchwire.ragged_pad_value", value: { string_value: "-1.5" } }
        parameters { key: "batchwire.retry_by_halves", value: { string_value: "No" } }
        parameters { key: "batchwire.split_on_oom", value: { string_value: "0" } }
        parameters { key: "batchwire.intra_op_threads", value: { string_value: "3" } }
        parameters { key: "batchwire.inline_below_us", value: { string_value: " 0 " } }
        parameters { key: "user.key", value: { string_value: "kept" } }
    """
    model_dir, config, fmt = _load(tmp_path, config_text, name="full")
    spec = config_to_spec(config, fmt, "3", model_dir, model_dir / "config.pbtxt")

    image, mask = spec.inputs
    assert (image.datatype, image.dims, image.reshape) == ("FP16", (4,), (2, 2))
    assert (mask.datatype, mask.dims, mask.optional, mask.allow_ragged_batch) == (
        "BOOL",
        (-1,),
        True,
        True,
    )
    assert (spec.outputs[0].datatype, spec.outputs[0].reshape) == ("BF16", ())

    batching = spec.batching
    assert batching is not None
    assert batching.preferred_batch_sizes == (4, 8)
    assert batching.max_queue_delay_us == 300
    assert batching.preserve_ordering is True
    assert (batching.priority_levels, batching.default_priority_level) == (3, 2)
    assert batching.default_queue_policy.timeout_action is TimeoutAction.DELAY
    assert batching.default_queue_policy.default_timeout_us == 50
    assert batching.default_queue_policy.max_queue_size == 7
    assert batching.queue_policy(1).allow_timeout_override is True
    assert batching.queue_policy(1).max_queue_size == 2
    assert batching.queue_policy(3) == batching.default_queue_policy
    assert batching.adaptive_delay is False
    assert batching.ragged_pad_value == -1.5
    assert batching.retry_by_halves is False
    assert batching.split_on_oom is False
    assert (spec.execution.intra_op_threads, spec.execution.inline_below_us) == (3, 0)

    kinds = [(g.kind, g.count, g.gpus) for g in spec.instance_groups]
    assert kinds == [
        (DeviceKind.CPU, 2, ()),
        (DeviceKind.GPU, 1, (0, 1)),
        (DeviceKind.AUTO, 1, ()),  # KIND_MODEL is treated as AUTO
    ]

    zeros, from_file = spec.warmup
    assert (zeros.name, zeros.batch_size, zeros.count) == ("zeros", 4, 1)
    assert zeros.inputs["IMAGE"] == ("FP16", (4,), "zero")
    assert from_file.count == 3
    assert from_file.inputs["IMAGE"][2] == str(model_dir / "warmup" / "img.bin")

    assert spec.parameters["user.key"] == "kept"


def test_batchwire_extensions_default_when_unset(tmp_path: Path) -> None:
    config_text = MLP + "dynamic_batching { }\n"
    model_dir, config, fmt = _load(tmp_path, config_text)
    batching = config_to_spec(config, fmt, "1", model_dir, "cfg").batching
    assert batching is not None
    assert (batching.adaptive_delay, batching.retry_by_halves, batching.split_on_oom) == (
        True,
        True,
        True,
    )
    assert batching.ragged_pad_value == 0.0
    execution = config_to_spec(config, fmt, "1", model_dir, "cfg").execution
    assert execution.intra_op_threads is None
    assert execution.inline_below_us == DEFAULT_INLINE_BELOW_US


# Each case: config text, files, then substrings the message must hold
# (field, what was got, what was expected). Every message must also name the file.
ERROR_CASES = {
    "malformed text": (
        'max_batch_size: 8\ninput [ { name: "X" data_type: TYPE_FP32 dims: [ 4 ] }\n',
        None,
        ["malformed text format at line 3, column 1", "Expected"],
    ),
    "unknown field": (
        "max_batch_size: 8\nbogus_field: 3\n",
        None,
        ["malformed text format at line 2, column 1", 'no field named "bogus_field"'],
    ),
    "name mismatch": (
        'name: "other"\n' + MLP,
        None,
        ["name", "'other'", "expected 'mlp'"],
    ),
    "invalid datatype": (
        """
        max_batch_size: 8
        input [ { name: "INPUT__0", data_type: TYPE_INVALID, dims: [ 4 ] } ]
        output [ { name: "OUTPUT__0", data_type: TYPE_FP32, dims: [ 2 ] } ]
        """,
        None,
        [
            "input 'INPUT__0': data_type TYPE_INVALID is not a datatype",
            "expected one of TYPE_BOOL",
        ],
    ),
    "string on torchscript": (
        """
        max_batch_size: 8
        input [ { name: "TEXT", data_type: TYPE_STRING, dims: [ 1 ] } ]
        output [ { name: "OUTPUT__0", data_type: TYPE_FP32, dims: [ 2 ] } ]
        """,
        None,
        ["input 'TEXT'", "TYPE_STRING", "python backend"],
    ),
    "no inputs": (
        'max_batch_size: 8\noutput [ { name: "O", data_type: TYPE_FP32, dims: [ 2 ] } ]\n',
        None,
        ["input", "no inputs declared", "expected at least one input"],
    ),
    "no outputs": (
        'max_batch_size: 8\ninput [ { name: "I", data_type: TYPE_FP32, dims: [ 2 ] } ]\n',
        None,
        ["output", "no outputs declared", "expected at least one output"],
    ),
    "duplicate input": (
        """
        input [ { name: "A", data_type: TYPE_FP32, dims: [ 2 ] },
                { name: "A", data_type: TYPE_FP32, dims: [ 2 ] } ]
        output [ { name: "O", data_type: TYPE_FP32, dims: [ 2 ] } ]
        """,
        None,
        ["input 'A'", "duplicate input name"],
    ),
    "zero dim": (
        """
        input [ { name: "A", data_type: TYPE_FP32, dims: [ 2, 0 ] } ]
        output [ { name: "O", data_type: TYPE_FP32, dims: [ 2 ] } ]
        """,
        None,
        ["input 'A'", "dims [2, 0]", "expected > 0, or -1"],
    ),
    "dim below -1": (
        """
        input [ { name: "A", data_type: TYPE_FP32, dims: [ 2 ] } ]
        output [ { name: "O", data_type: TYPE_FP32, dims: [ -2 ] } ]
        """,
        None,
        ["output 'O'", "dims [-2]", "expected > 0, or -1"],
    ),
    "empty dims": (
        """
        input [ { name: "A", data_type: TYPE_FP32 } ]
        output [ { name: "O", data_type: TYPE_FP32, dims: [ 2 ] } ]
        """,
        None,
        ["input 'A'", "dims is empty", "expected at least one dimension"],
    ),
    "reshape mismatch": (
        """
        input [ { name: "A", data_type: TYPE_FP32, dims: [ 6 ], reshape: { shape: [ 2, 2 ] } } ]
        output [ { name: "O", data_type: TYPE_FP32, dims: [ 2 ] } ]
        """,
        None,
        ["input 'A'", "reshape shape [2, 2] holds 4 elements", "dims [6] hold 6"],
    ),
    "negative max_batch_size": (
        "max_batch_size: -1\n" + MLP.replace("max_batch_size: 8", ""),
        None,
        ["max_batch_size", "must be >= 0, got -1"],
    ),
    "dynamic batching without batch": (
        MLP.replace("max_batch_size: 8", "max_batch_size: 0") + "dynamic_batching { }\n",
        None,
        ["dynamic_batching", "max_batch_size is 0", "expected max_batch_size >= 1"],
    ),
    "preferred above max": (
        MLP + "dynamic_batching { preferred_batch_size: [ 4, 16 ] }\n",
        None,
        ["dynamic_batching.preferred_batch_size", "16 is outside 1..8"],
    ),
    "default priority out of range": (
        MLP + "dynamic_batching { priority_levels: 2, default_priority_level: 3 }\n",
        None,
        ["dynamic_batching.default_priority_level", "3 is out of range", "expected 1..2"],
    ),
    "default priority without levels": (
        MLP + "dynamic_batching { default_priority_level: 1 }\n",
        None,
        ["default_priority_level", "1 is out of range", "expected 0"],
    ),
    "priority queue policy key": (
        MLP
        + "dynamic_batching { priority_levels: 2, default_priority_level: 1,"
        + " priority_queue_policy { key: 5, value: { } } }\n",
        None,
        ["priority_queue_policy[5]", "out of range", "expected 1..2"],
    ),
    "sequence batching": (
        MLP + "sequence_batching { }\n",
        None,
        ["sequence_batching", "not supported"],
    ),
    "ensemble": (
        MLP + 'ensemble_scheduling { step [ { model_name: "a" } ] }\n',
        None,
        ["ensemble_scheduling", "not supported"],
    ),
    "bad bool parameter": (
        MLP + 'parameters { key: "batchwire.split_on_oom", value: { string_value: "maybe" } }\n',
        None,
        [
            "parameters['batchwire.split_on_oom'].string_value",
            "'maybe' is not a boolean",
            "expected one of true, false",
        ],
    ),
    "bad float parameter": (
        MLP + 'parameters { key: "batchwire.ragged_pad_value", value: { string_value: "zero" } }\n',
        None,
        ["parameters['batchwire.ragged_pad_value'].string_value", "'zero' is not a finite number"],
    ),
    "bad integer parameter": (
        MLP + 'parameters { key: "batchwire.inline_below_us", value: { string_value: "fast" } }\n',
        None,
        ["parameters['batchwire.inline_below_us'].string_value", "'fast' is not an integer"],
    ),
    "integer parameter below its minimum": (
        MLP + 'parameters { key: "batchwire.intra_op_threads", value: { string_value: "0" } }\n',
        None,
        ["parameters['batchwire.intra_op_threads'].string_value", "must be >= 1, got 0"],
    ),
    "unknown batchwire parameter": (
        MLP + 'parameters { key: "batchwire.adaptive_dealy", value: { string_value: "1" } }\n',
        None,
        ["parameters['batchwire.adaptive_dealy']", "unknown", "batchwire.adaptive_delay"],
    ),
    "unsupported platform": (
        'platform: "tensorrt_plan"\n' + MLP,
        None,
        ["platform", "'tensorrt_plan' is not supported", "expected one of pytorch_libtorch"],
    ),
    "platform backend mismatch": (
        'platform: "pytorch_libtorch"\nbackend: "python"\n' + MLP,
        None,
        ["backend", "'python' does not match platform", "expected 'pytorch'"],
    ),
    "no model file to infer from": (
        MLP,
        {"1/readme.txt": b""},
        ["platform", "no model file found", "expected one of model.pt, model.pt2, model.py"],
    ),
    "ambiguous model files": (
        MLP,
        {"1/model.pt": b"", "1/model.py": ""},
        ["platform", "model.pt, model.py", "set platform or backend"],
    ),
    "cpu group with gpus": (
        MLP + "instance_group [ { kind: KIND_CPU, gpus: [ 0 ] } ]\n",
        None,
        ["instance_group[0].gpus", "KIND_CPU", "expected none"],
    ),
    "negative instance count": (
        MLP + "instance_group [ { count: -2 } ]\n",
        None,
        ["instance_group[0].count", "must be >= 1, got -2"],
    ),
    "warmup unknown input": (
        MLP
        + 'model_warmup [ { name: "w", batch_size: 1, inputs { key: "INPUT__0", value: '
        + '{ data_type: TYPE_FP32, dims: [ 4 ], zero_data: true } } inputs { key: "NOPE", '
        + "value: { data_type: TYPE_FP32, dims: [ 4 ], zero_data: true } } } ]\n",
        None,
        ["model_warmup 'w'.inputs['NOPE']", "not a model input", "expected one of INPUT__0"],
    ),
    "warmup batch too large": (
        MLP
        + 'model_warmup [ { name: "w", batch_size: 9, inputs { key: "INPUT__0", value: '
        + "{ data_type: TYPE_FP32, dims: [ 4 ], random_data: true } } } ]\n",
        None,
        ["model_warmup 'w'.batch_size", "9 is outside 1..8"],
    ),
    "warmup data file leads out": (
        MLP
        + 'model_warmup [ { name: "w", batch_size: 1, inputs { key: "INPUT__0", value: '
        + '{ data_type: TYPE_FP32, dims: [ 2 ], input_data_file: "../../etc/passwd" } } } ]\n',
        None,
        ["model_warmup 'w'.inputs['INPUT__0'].input_data_file", "leads out of the model's"],
    ),
    "warmup data file absolute": (
        MLP
        + 'model_warmup [ { name: "w", batch_size: 1, inputs { key: "INPUT__0", value: '
        + '{ data_type: TYPE_FP32, dims: [ 2 ], input_data_file: "/etc/passwd" } } } ]\n',
        None,
        ["input_data_file", "'/etc/passwd' leads out of the model's warmup folder"],
    ),
    "warmup dims too large": (
        MLP
        + 'model_warmup [ { name: "w", batch_size: 8, inputs { key: "INPUT__0", value: '
        + "{ data_type: TYPE_FP32, dims: [ 100000, 100000 ], zero_data: true } } } ]\n",
        None,
        ["model_warmup 'w'.inputs['INPUT__0']", "80000000000 elements, expected at most 67108864"],
    ),
}


def test_a_warmup_data_file_linked_out_of_the_warmup_folder_is_refused(tmp_path: Path) -> None:
    secret = tmp_path / "secret.bin"
    secret.write_bytes(b"\0" * 8)
    config_text = (
        MLP
        + 'model_warmup [ { name: "w", batch_size: 1, inputs { key: "INPUT__0", value: '
        + '{ data_type: TYPE_FP32, dims: [ 2 ], input_data_file: "link.bin" } } } ]\n'
    )
    model_dir, config, fmt = _load(tmp_path, config_text)
    (model_dir / "warmup").mkdir()
    (model_dir / "warmup" / "link.bin").symlink_to(secret)
    with pytest.raises(ModelLoadError) as info:
        config_to_spec(config, fmt, "1", model_dir, model_dir / "config.pbtxt")
    assert "'link.bin' resolves outside the model's warmup folder" in str(info.value)
    (model_dir / "warmup" / "link.bin").unlink()
    (model_dir / "warmup" / "link.bin").write_bytes(b"\0" * 8)  # a real file inside: fine
    spec = config_to_spec(config, fmt, "1", model_dir, model_dir / "config.pbtxt")
    assert spec.warmup[0].inputs["INPUT__0"][2] == str(model_dir / "warmup" / "link.bin")


@pytest.mark.parametrize("case", sorted(ERROR_CASES))
def test_config_errors_name_file_field_and_problem(tmp_path: Path, case: str) -> None:
    config_text, files, fragments = ERROR_CASES[case]
    with pytest.raises(ModelLoadError) as info:
        _load(tmp_path, config_text, files)
    message = str(info.value)
    assert message.startswith(str(tmp_path / "models" / "mlp" / "config.pbtxt") + ": ")
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"


def test_invalid_datatype_message_is_exact(tmp_path: Path) -> None:
    config_text = ERROR_CASES["invalid datatype"][0]
    with pytest.raises(ModelLoadError) as info:
        _load(tmp_path, config_text)
    path = tmp_path / "models" / "mlp" / "config.pbtxt"
    assert str(info.value).startswith(
        f"{path}: input 'INPUT__0': data_type TYPE_INVALID is not a datatype "
        "(expected one of TYPE_BOOL, TYPE_UINT8, "
    )


def test_missing_config_file(tmp_path: Path) -> None:
    model_dir = write_model(tmp_path, "m", None, {"1/model.pt": b""})
    with pytest.raises(ModelLoadError, match=r"m/config\.pbtxt: file not found"):
        load_config(model_dir)


def test_harmless_unsupported_fields_warn_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config_text = (
        MLP
        + "optimization { graph { level: 1 } }\n"
        + "response_cache { enable: true }\n"
        + "instance_group [ { kind: KIND_CPU, rate_limiter { priority: 1 } } ]\n"
    )
    model_dir = write_model(tmp_path / "models", "warned", config_text, {"1/model.pt": b""})
    with caplog.at_level(logging.WARNING, logger="batchwire.server.repository"):
        load_config(model_dir)
        load_config(model_dir)
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len([m for m in warned if ": optimization: " in m]) == 1
    assert not [m for m in warned if ": response_cache: " in m]  # acted on: docs/response-cache.md
    assert len([m for m in warned if "instance_group[0].rate_limiter" in m]) == 1
    assert all("config.pbtxt" in m for m in warned)
