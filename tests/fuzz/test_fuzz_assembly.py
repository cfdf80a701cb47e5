"""Property-based tests of batch assembly and output splitting (batching/assembly.py).

Each example draws a model spec (one to three inputs of any v2 datatype, fixed and
variable dims, ragged and optional inputs, batching or not) and a set of requests
that share a shape key, as the batcher would put them in one batch. The model is an
echo: one output per required input, the batch's array as the model saw it, plus
ROWS, each item's index in the batch. The properties, from the module's rules:

- the requests' shape keys are equal; the batch holds ``sum(sizes)`` items and each
  request's data sits in its own rows, in the corner of padded axes, the rest being
  the pad value; ``padded_size`` is the item count scaled by the padding overhead;
- split gives each request its own rows (ROWS), exactly the outputs it asked for, in
  its order, and each echo output cut by the ragged slicing rule; where that rule is
  unambiguous (every padded length an output axis matches is that input's own), the
  output is exactly the request's input: padding never leaks;
- model outputs that break the config (missing, extra, wrong batch axis, shape,
  datatype or type) fail with OutputError naming the model and the output, never
  with another exception.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from batchwire.batching.assembly import AssembledBatch, Assembler, OutputError
from batchwire.core.datatypes import NUMPY_DTYPES, fill_value_problem
from batchwire.core.spec import BatchingSpec, ModelSpec, TensorSpec
from batchwire.core.types import InferenceRequest

PROPERTY_SETTINGS = settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
DATATYPES = tuple(NUMPY_DTYPES)
#: Pad values every datatype holds exactly (see the xfail test for one that does not fit).
PAD_VALUES = st.sampled_from([0.0, 1.0, 2.0])


@dataclass
class Case:
    """A spec, the requests of one batch and their batch sizes."""

    spec: ModelSpec
    requests: list[InferenceRequest]
    sizes: list[int]
    pad: float

    @property
    def echoed(self) -> list[TensorSpec]:
        """The required inputs, each echoed as OUT_<name>."""
        return [t for t in self.spec.inputs if not t.optional]


def same(got: np.ndarray, want: np.ndarray) -> bool:
    """Equal shapes and elements, bitwise for numbers (a NaN equals itself)."""
    if got.shape != want.shape:
        return False
    if want.dtype == np.object_:
        return list(got.flat) == list(want.flat)
    return np.ascontiguousarray(got).tobytes() == np.ascontiguousarray(want).tobytes()


def data(draw: st.DrawFn, datatype: str, shape: tuple[int, ...]) -> np.ndarray:
    if datatype == "BYTES":
        items = draw(st.lists(st.binary(max_size=3), min_size=math.prod(shape)))
        array = np.empty(math.prod(shape), dtype=np.object_)
        array[:] = items[: array.size]
        return array.reshape(shape)
    return draw(arrays(NUMPY_DTYPES[datatype], shape))


@st.composite
def cases(draw: st.DrawFn) -> Case:
    """A spec and a batch of requests with one shape key (see the module docstring)."""
    batched = draw(st.integers(0, 4)) > 0
    count = draw(st.integers(1, 5)) if batched else 1
    sizes = [draw(st.integers(1, 3)) if batched else 1 for _ in range(count)]
    pad = draw(PAD_VALUES)
    tensors: list[TensorSpec] = []
    #: per input, per request: the non-batch shape; None for an input no request sends.
    shapes: list[list[tuple[int, ...]] | None] = []
    for index in range(draw(st.integers(1, 3))):
        dims = tuple(draw(st.lists(st.sampled_from([-1, 1, 2, 3]), min_size=1, max_size=3)))
        datatype = draw(st.sampled_from(DATATYPES))
        # A pad value the datatype cannot hold is refused by ModelSpec (tested below).
        fits = fill_value_problem(pad, datatype) is None
        ragged = batched and -1 in dims and fits and draw(st.booleans())
        optional = index > 0 and draw(st.integers(0, 3)) == 0
        tensors.append(
            TensorSpec(f"I{index}", datatype, dims, optional=optional, allow_ragged_batch=ragged)
        )
        if optional and draw(st.booleans()):
            shapes.append(None)  # declared, absent from every request of the batch
            continue
        # A variable dim is one length for the whole batch, or, ragged, one per request.
        shared = [draw(st.integers(0, 3)) if d == -1 else d for d in dims]
        shapes.append(
            [
                tuple(
                    draw(st.integers(0, 4)) if ragged and d == -1 else s
                    for d, s in zip(dims, shared, strict=True)
                )
                for _ in range(count)
            ]
        )
    required = [t for t in tensors if not t.optional]
    outputs = [TensorSpec(f"OUT_{t.name}", t.datatype, t.dims) for t in required]
    outputs.append(TensorSpec("ROWS", "INT64", (1,)))
    spec = ModelSpec(
        name="fuzz",
        version="1",
        platform="python",
        max_batch_size=16 if batched else 0,
        inputs=tuple(tensors),
        outputs=tuple(outputs),
        batching=BatchingSpec(ragged_pad_value=pad) if batched else None,
    )
    names = [t.name for t in outputs]
    requests = []
    for r, size in enumerate(sizes):
        inputs = {
            t.name: data(draw, t.datatype, ((size,) if batched else ()) + per_request[r])
            for t, per_request in zip(tensors, shapes, strict=True)
            if per_request is not None
        }
        wanted = tuple(draw(st.lists(st.sampled_from(names), unique=True, max_size=len(names))))
        requests.append(InferenceRequest(inputs=inputs, requested_outputs=wanted, id=str(r)))
    return Case(spec, requests, sizes, pad)


def pad_array(pad: float, datatype: str) -> np.ndarray:
    """The pad value as one element of ``datatype``'s storage dtype."""
    if datatype == "BYTES":
        return np.array([b""], dtype=np.object_)
    if datatype == "BF16":
        return np.array([pad], np.float32).view(np.uint16)[1:]  # the high half (little-endian)
    return np.array([pad]).astype(NUMPY_DTYPES[datatype])


def echo_outputs(case: Case, batch: AssembledBatch) -> dict[str, np.ndarray]:
    """What the echo model returns for ``batch``."""
    outputs = {f"OUT_{t.name}": batch.host[t.name] for t in case.echoed}
    rows = np.arange(batch.total, dtype=np.int64)
    outputs["ROWS"] = rows.reshape(batch.total, 1) if case.spec.batched else rows
    return outputs


def first_pad(batch: AssembledBatch, length: int) -> list[int] | None:
    """The ragged slicing rule's match: per-request lengths of the first padded input
    axis padded to ``length``, or None."""
    return next((lengths for longest, lengths in batch.pads if longest == length), None)


def expected_cut(
    output: np.ndarray, rows: slice, index: int, var_axes: list[int], batch: AssembledBatch
) -> np.ndarray:
    """Request ``index``'s part of an echo output by the ragged slicing rule."""
    where: list[slice] = [rows]
    for axis in range(1, output.ndim):
        match = first_pad(batch, output.shape[axis]) if axis in var_axes else None
        where.append(slice(None) if match is None else slice(0, match[index]))
    return output[tuple(where)]


def unambiguous(tensor: TensorSpec, var_axes: list[int], case: Case, batch: AssembledBatch) -> bool:
    """True when the rule cuts each variable axis of ``tensor``'s echo by its own lengths
    (or leaves it whole, every request having the full length)."""
    for axis in var_axes:
        own = [r.inputs[tensor.name].shape[axis] for r in case.requests]
        longest = batch.host[tensor.name].shape[axis]
        match = first_pad(batch, longest)
        if (match or [longest] * len(own)) != own:
            return False
    return True


@PROPERTY_SETTINGS
@given(case=cases())
def test_a_batch_splits_back_into_each_requests_own_data(case: Case) -> None:
    assembler = Assembler(case.spec)
    batched = case.spec.batched
    keys = {assembler.shape_key(r.inputs) for r in case.requests}
    assert len(keys) == 1, keys

    batch = assembler.assemble(case.requests, case.sizes)
    total = sum(case.sizes)
    assert batch.total == total and list(batch.sizes) == case.sizes
    real = padded = 0
    for t in case.spec.inputs:
        if t.name not in case.requests[0].inputs:
            assert t.name not in batch.host
            continue
        host = batch.host[t.name]
        if batched:
            assert host.shape[0] == total
        offset = 0
        covered = np.zeros(host.shape, dtype=bool)
        for request, size in zip(case.requests, case.sizes, strict=True):
            mine = request.inputs[t.name]
            corner = (slice(offset, offset + size), *(slice(0, n) for n in mine.shape[1:]))
            if not batched:
                corner = tuple(slice(0, n) for n in mine.shape)
            assert same(host[corner], mine), t.name
            covered[corner] = True
            offset += size
        rest = host[~covered]
        if rest.size:
            # Padding: only where no request has data, and only the pad value.
            assert t.allow_ragged_batch
            pad = pad_array(case.pad, t.datatype)
            assert all(same(np.array([v], dtype=host.dtype), pad) for v in rest.flat)
            real += int(covered.sum())
            padded += host.size
    if padded > real > 0:
        event("padded")
        assert batch.padded_size == math.ceil(total * padded / real)
    else:
        assert batch.padded_size == total

    results = assembler.split(echo_outputs(case, batch), batch, case.requests)
    assert len(results) == len(case.requests)
    all_names = [t.name for t in case.spec.outputs]
    offset = 0
    for index, (request, size, result) in enumerate(
        zip(case.requests, case.sizes, results, strict=True)
    ):
        assert list(result) == list(request.requested_outputs or all_names)
        rows = slice(offset, offset + size)
        offset += size
        if "ROWS" in result and batched:
            assert result["ROWS"].ravel().tolist() == list(range(rows.start, rows.stop))
        for t in case.echoed:
            name = f"OUT_{t.name}"
            if name not in result:
                continue
            got, mine = result[name], request.inputs[t.name]
            if not batched:
                assert same(got, mine)
                continue
            var_axes = [i + 1 for i, d in enumerate(t.dims) if d == -1]
            assert same(got, expected_cut(batch.host[t.name], rows, index, var_axes, batch)), name
            if unambiguous(t, var_axes, case, batch):
                event("echo: unambiguous")
                assert same(got, mine), f"{name}: padding leaked into request {index}"
            else:
                event("echo: cut by another input's padded length")


BREAKS = st.sampled_from(["missing", "extra", "batch", "rank", "datatype", "type", "not-a-dict"])


def broken(outputs: dict[str, np.ndarray], how: str, data: st.DataObject) -> object:
    """``outputs`` changed so that they break the config in one way."""
    name = data.draw(st.sampled_from(sorted(outputs)))
    value = outputs[name]
    changed = dict(outputs)
    if how == "missing":
        del changed[name]
    elif how == "extra":
        changed["UNDECLARED"] = value
    elif how == "batch":
        changed[name] = np.concatenate([value, value[:1]])  # one item more than the batch
    elif how == "rank":
        changed[name] = value[..., np.newaxis]
    elif how == "datatype":
        other = data.draw(
            st.sampled_from(
                [dt for dt in ("FP64", "INT8", "BOOL") if NUMPY_DTYPES[dt] != value.dtype]
            )
        )
        changed[name] = np.zeros(value.shape, NUMPY_DTYPES[other])
    elif how == "type":
        changed[name] = value.tolist()
    else:
        return list(outputs.values())
    return changed


@PROPERTY_SETTINGS
@given(case=cases(), how=BREAKS, data=st.data())
def test_outputs_that_break_the_config_fail_with_output_error(
    case: Case, how: str, data: st.DataObject
) -> None:
    if how == "batch" and not case.spec.batched:
        return  # no batch axis to get wrong
    assembler = Assembler(case.spec)
    batch = assembler.assemble(case.requests, case.sizes)
    bad = broken(echo_outputs(case, batch), how, data)
    with pytest.raises(OutputError) as err:
        assembler.split(bad, batch, case.requests)
    assert err.value.message.startswith("model 'fuzz' version '1': "), err.value.message


@PROPERTY_SETTINGS
@given(case=cases())
def test_requests_differing_outside_ragged_axes_never_share_a_key(case: Case) -> None:
    if not case.spec.batched:
        return  # a model that does not batch never groups requests
    assembler = Assembler(case.spec)
    first = case.requests[0].inputs
    key = assembler.shape_key(first)
    for t in case.spec.inputs:
        if t.name not in first:
            continue
        array = first[t.name]
        # One item more on the last axis: same key only when that axis is ragged.
        longer = np.concatenate([array, array[..., :1] if array.shape[-1] else array], axis=-1)
        if longer.shape == array.shape:
            continue
        other = {**first, t.name: np.resize(array, longer.shape)}
        ragged_axis = t.allow_ragged_batch and t.dims[-1] == -1
        assert (assembler.shape_key(other) == key) == ragged_axis, t.name
        if t.optional:
            without = {k: v for k, v in first.items() if k != t.name}
            assert assembler.shape_key(without) != key


@pytest.mark.parametrize(
    ("datatype", "pad", "problem"),
    [
        ("UINT8", -1.0, "expected a value from 0 to 255"),
        ("INT32", 1e300, "expected a value from -2147483648 to 2147483647"),
        ("INT64", float("inf"), "expected a value from"),
        ("FP16", 1e6, "expected a magnitude up to 65504"),
    ],
)
def test_a_pad_value_that_does_not_fit_the_datatype_is_refused_before_a_batch_runs(
    datatype: str, pad: float, problem: str
) -> None:
    """Found by fuzzing: such a pad value used to load, then fail every padded batch."""
    with pytest.raises(ValueError, match=problem) as info:
        ModelSpec(
            name="fuzz",
            version="1",
            platform="python",
            max_batch_size=4,
            inputs=(TensorSpec("I0", datatype, (-1,), allow_ragged_batch=True),),
            outputs=(TensorSpec("OUT_I0", datatype, (-1,)),),
            batching=BatchingSpec(ragged_pad_value=pad),
        )
    assert f"cannot pad ragged input 'I0' ({datatype})" in str(info.value)
