"""Property-based tests of config.pbtxt parsing: any text loads or is one ModelLoadError.

Texts are drawn three ways: configs assembled field by field (:func:`configs`: every
top-level field batchwire reads, with values of the right type and in range, out of
range, huge, negative, of the wrong type, unknown enum names, duplicate and unicode
names); those configs mutated as text (spans cut, lines repeated, bytes inserted,
the whole wrapped in deep nesting); and random text and bytes. Each is read through
:class:`fuzz_targets.ConfigRepository` exactly as the server reads a model folder,
and must give ModelSpecs or a ModelLoadError whose message names the file and the
problem; any other exception fails the property. Reported bugs the target passes
over (:data:`fuzz_targets.KNOWN_FAILURES`) each have an ``xfail(strict=True)`` test
here.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fuzz_targets import ConfigRepository
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from batchwire.core.datatypes import CONFIG_TO_V2

PROPERTY_SETTINGS = settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

INT64 = st.integers(-(2**63), 2**63 - 1)
#: Integers of any size: in range, negative, past int32 / int64 / uint64.
INTEGERS = st.one_of(st.integers(-3, 10), INT64, st.integers(-(2**70), 2**70))
#: Names from a small pool (so that duplicates happen), unicode text, the empty name.
NAMES = st.one_of(
    st.sampled_from(["x", "y", "INPUT__0", "OUTPUT__0", "", "名前", "x\ty"]),
    st.text(max_size=6),
)
DATA_TYPES = st.one_of(
    st.sampled_from(sorted(CONFIG_TO_V2)),
    st.sampled_from(["TYPE_INVALID", "TYPE_FP8", "FP32", "type_fp32"]),
    st.integers(-2, 30).map(str),
)
#: Only the Kind enum's names: a number outside it is a known failure (see below).
KINDS = st.sampled_from(["KIND_AUTO", "KIND_CPU", "KIND_GPU", "KIND_MODEL", "KIND_TPU"])
BATCHWIRE_KEYS = st.sampled_from(
    [
        "batchwire.adaptive_delay",
        "batchwire.ragged_pad_value",
        "batchwire.retry_by_halves",
        "batchwire.split_on_oom",
        "batchwire.python_class",
        "batchwire.intra_op_threads",
        "batchwire.inline_below_us",
        "batchwire.max_input_bytes",
        "batchwire.typo",
        "custom",
    ]
)
PARAMETER_VALUES = st.one_of(
    st.sampled_from(["true", "off", "1", "-1", "0.5", "nan", "1e999", "Model", "1 2", "٣"]),
    st.text(max_size=6),
)


def quoted(text: str) -> str:
    """``text`` as a text-format string literal."""
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{escaped}"'


def scalar(draw: st.DrawFn, good: st.SearchStrategy[str], wild: bool) -> str:
    """A field value: ``good`` unless ``wild``; then one time in five one of the wrong type."""
    if not wild or draw(st.integers(0, 4)):
        return draw(good)
    return draw(
        st.one_of(
            st.text(max_size=4).map(quoted),
            st.sampled_from(["1.5", "true", "[ 1 ]", "{ }", "-", "nan", "0x10", "KIND_CPU"]),
        )
    )


SMALL = st.integers(0, 4)


def ints(draw: st.DrawFn, wild: bool, small: st.SearchStrategy[int] = SMALL) -> str:
    """An integer: from ``small`` unless ``wild``; then also negative or of any size."""
    if not wild:
        return str(draw(small))
    return scalar(draw, st.one_of(small, st.integers(-2, 9), INTEGERS).map(str), wild)


def dims(draw: st.DrawFn, wild: bool) -> str:
    if wild:
        element = st.one_of(st.integers(-2, 4), st.sampled_from([-1, 2**31, 2**63 - 1]))
        values = draw(st.lists(element, max_size=4))
    else:
        values = draw(st.lists(st.sampled_from([-1, 1, 2, 3]), min_size=1, max_size=3))
    return "[ " + ", ".join(map(str, values)) + " ]"


@st.composite
def tensors(draw: st.DrawFn, kind: str, wild: bool, name: str | None = None) -> str:
    names = NAMES if name is None else st.just(name)
    data_types = DATA_TYPES if wild else st.sampled_from(["TYPE_FP32", "TYPE_INT64", "TYPE_BOOL"])
    fields = [f"name: {quoted(draw(names))}", f"data_type: {scalar(draw, data_types, wild)}"]
    fields.append(f"dims: {dims(draw, wild)}")
    if wild and draw(st.integers(0, 4)) == 0:
        fields.append(f"reshape: {{ shape: {dims(draw, wild)} }}")
    for flag in ("optional", "allow_ragged_batch", "is_shape_tensor"):
        # Outputs have no optional or allow_ragged_batch: a parse error, when wild.
        tame = flag != "is_shape_tensor" and kind == "input"
        if draw(st.integers(0, 3)) == 0 and (wild or tame):
            fields.append(f"{flag}: {scalar(draw, st.sampled_from(['true', 'false']), wild)}")
    return f"{kind} {{ {' '.join(draw(st.permutations(fields)))} }}"


@st.composite
def queue_policies(draw: st.DrawFn, wild: bool) -> str:
    actions = st.sampled_from(
        ["REJECT", "DELAY", "DROP", "1", "7"] if wild else ["REJECT", "DELAY"]
    )
    return (
        f"{{ timeout_action: {scalar(draw, actions, wild)} "
        f"default_timeout_microseconds: {ints(draw, wild)} "
        f"allow_timeout_override: true max_queue_size: {ints(draw, wild)} }}"
    )


@st.composite
def dynamic_batching(draw: st.DrawFn, wild: bool) -> str:
    sizes = ", ".join(ints(draw, wild, st.integers(1, 4)) for _ in range(draw(st.integers(0, 3))))
    fields = [
        f"preferred_batch_size: [ {sizes} ]",
        f"max_queue_delay_microseconds: {ints(draw, wild)}",
        f"priority_levels: {ints(draw, wild, st.just(2))}",
        f"default_priority_level: {ints(draw, wild, st.integers(1, 2))}",
        f"default_queue_policy: {draw(queue_policies(wild))}",
    ]
    for _ in range(draw(st.integers(0, 2))):
        level = ints(draw, wild, st.integers(1, 2))
        fields.append(
            f"priority_queue_policy {{ key: {level} value: {draw(queue_policies(wild))} }}"
        )
    chosen = draw(st.lists(st.sampled_from(fields), unique=True))
    return f"dynamic_batching {{ {' '.join(chosen)} }}"


@st.composite
def warmups(draw: st.DrawFn, wild: bool) -> str:
    source = draw(
        st.sampled_from(["zero_data: true", "random_data: true", 'input_data_file: "raw"', ""])
    )
    sample = f"data_type: {scalar(draw, DATA_TYPES, wild)} dims: {dims(draw, wild)} {source}"
    return (
        f"model_warmup {{ name: {quoted(draw(NAMES))} batch_size: {ints(draw, wild)} "
        f"count: {ints(draw, wild)} inputs {{ key: {quoted(draw(NAMES))} value {{ {sample} }} }} }}"
    )


@st.composite
def configs(draw: st.DrawFn) -> str:
    """A config.pbtxt assembled field by field (see the module docstring).

    Half of them are *tame*: every value of the right type and in a small range, so
    that many load and the checks after parsing are reached; the *wild* half draws
    values of any size and type.
    """
    wild = draw(st.booleans())
    fields: list[str] = []
    if draw(st.integers(0, 3)) == 0:
        fields.append(f"name: {quoted(draw(st.sampled_from(['multi', 'pt', 'other', ''])))}")
    if not wild or draw(st.booleans()):
        platform = st.sampled_from(
            ["pytorch_libtorch", "torch_export", "onnxruntime_onnx", ""]
            if wild
            else ["pytorch_libtorch", "torch_export"]
        )
        fields.append(f"platform: {scalar(draw, platform.map(quoted), wild)}")
    if wild and draw(st.booleans()):
        backend = st.sampled_from(["python", "pytorch", "tensorflow"])
        fields.append(f"backend: {scalar(draw, backend.map(quoted), wild)}")
    if wild and draw(st.integers(0, 4)) == 0:
        name = st.sampled_from(["model.py", "model.pt2", "weights.bin", "../model.pt"])
        fields.append(f"default_model_filename: {quoted(draw(name))}")
    fields.append(f"max_batch_size: {ints(draw, wild, st.integers(4, 8))}")
    for kind, most in (("input", 3), ("output", 2)):
        tensors_of_kind = [draw(tensors(kind, wild)) for _ in range(draw(st.integers(0, most)))]
        if not wild:
            names = draw(
                st.lists(st.sampled_from("abcdef"), min_size=1, max_size=most, unique=True)
            )
            tensors_of_kind = [draw(tensors(kind, wild, name)) for name in names]
        fields += tensors_of_kind
    if draw(st.booleans()):
        fields.append(draw(dynamic_batching(wild)))
    for _ in range(draw(st.integers(0, 2))):
        gpus = ", ".join(ints(draw, wild) for _ in range(draw(st.integers(0, 2))))
        kind = scalar(draw, KINDS if wild else st.just("KIND_GPU"), wild)
        fields.append(
            f"instance_group {{ count: {ints(draw, wild)} kind: {kind} gpus: [ {gpus} ] }}"
        )
    if draw(st.integers(0, 3)) == 0:
        policy = draw(
            st.sampled_from(
                [
                    "all: { }",
                    f"latest: {{ num_versions: {ints(draw, wild, st.integers(1, 3))} }}",
                    f"specific: {{ versions: [ {ints(draw, wild, st.integers(1, 2))} ] }}",
                ]
            )
        )
        fields.append(f"version_policy: {{ {policy} }}")
    for _ in range(draw(st.integers(0, 3)) if wild else 0):
        key, value = quoted(draw(BATCHWIRE_KEYS)), quoted(draw(PARAMETER_VALUES))
        fields.append(f"parameters {{ key: {key} value: {{ string_value: {value} }} }}")
    if wild and draw(st.integers(0, 4)) == 0:
        fields.append(draw(warmups(wild)))
    if wild and draw(st.integers(0, 4)) == 0:
        fields.append(
            draw(
                st.sampled_from(
                    [
                        "sequence_batching { }",
                        "ensemble_scheduling { }",
                        "model_transaction_policy { decoupled: true }",
                        "optimization { priority: PRIORITY_MAX }",
                        "response_cache { enable: true }",
                        "unknown_field: 1",
                    ]
                )
            )
        )
    return "\n".join(draw(st.permutations(fields))) + "\n"


@st.composite
def mutated_configs(draw: st.DrawFn) -> str:
    """A drawn config changed as text: a cut, a repeat, an insertion, or deep nesting."""
    text = draw(configs())
    how = draw(st.sampled_from(["cut", "repeat", "insert", "nest"]))
    if how == "nest":
        depth = draw(st.sampled_from([5, 100, 5000]))
        opener = draw(st.sampled_from(["dynamic_batching {", "input {", "a {", "{"]))
        return opener * depth + text + "}" * depth
    start = draw(st.integers(0, len(text)))
    end = draw(st.integers(start, min(len(text), start + 12)))
    if how == "cut":
        return text[:start] + text[end:]
    if how == "repeat":
        return text[:end] + text[start:end] * draw(st.integers(1, 50)) + text[end:]
    return text[:start] + draw(st.text(max_size=6)) + text[start:]


@pytest.fixture(scope="module")
def repository() -> Iterator[ConfigRepository]:
    repo = ConfigRepository()
    yield repo
    repo.close()


@PROPERTY_SETTINGS
@given(text=configs())
def test_assembled_configs_load_or_fail_with_a_load_error(
    repository: ConfigRepository, text: str
) -> None:
    loaded = repository.check(text.encode("utf-8"))
    event(f"models loaded: {loaded}")


@PROPERTY_SETTINGS
@given(text=mutated_configs())
def test_mutated_configs_load_or_fail_with_a_load_error(
    repository: ConfigRepository, text: str
) -> None:
    repository.check(text.encode("utf-8"))


@PROPERTY_SETTINGS
@given(data=st.one_of(st.text().map(lambda t: t.encode("utf-8")), st.binary()))
def test_random_text_and_bytes_fail_with_a_load_error(
    repository: ConfigRepository, data: bytes
) -> None:
    repository.check(data)


def test_a_well_formed_config_loads(repository: ConfigRepository) -> None:
    # The properties above are only worth something if valid configs get all the way
    # through: this one does, for both model folders.
    text = """
        platform: "pytorch_libtorch"
        max_batch_size: 4
        input { name: "x" data_type: TYPE_FP32 dims: [ -1, 3 ] allow_ragged_batch: true }
        output { name: "y" data_type: TYPE_FP32 dims: [ -1 ] }
        dynamic_batching { preferred_batch_size: [ 2, 4 ] priority_levels: 2
                           default_priority_level: 1 }
        instance_group { count: 2 kind: KIND_CPU }
        parameters { key: "batchwire.ragged_pad_value" value { string_value: "-1" } }
    """
    assert repository.check(text.encode()) == 2


def test_an_unknown_instance_group_kind_is_a_load_error(repository: ConfigRepository) -> None:
    text = """
        backend: "python"
        input { name: "x" data_type: TYPE_FP32 dims: [ 1 ] }
        output { name: "y" data_type: TYPE_FP32 dims: [ 1 ] }
        instance_group { kind: 17 }
    """
    folder = repository.root / "multi"
    (folder / "config.pbtxt").write_text(text)
    entry = repository.repository.discover_model("multi")
    assert entry.error is not None
    assert "instance_group[0].kind: 17 is not one of KIND_AUTO" in entry.error


def test_an_enum_given_as_a_huge_number_is_a_load_error() -> None:
    """Found by the atheris config target: protobuf's parser raised a bare ValueError."""
    from batchwire.core.errors import ModelLoadError
    from batchwire.server.repository.config import parse_config_text

    text = 'input { name: "x" data_type: 99999999999999999999999 dims: [ 1 ] }'
    with pytest.raises(ModelLoadError, match="malformed text format: Value out of range") as info:
        parse_config_text(text, "m/config.pbtxt")
    assert str(info.value).startswith("m/config.pbtxt: ")
