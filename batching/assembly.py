"""Turning requests into one model batch and the model's outputs back into responses.

Inputs. A batch of one request passes its arrays through untouched (``to_torch`` then
wraps them without copying). A batch of several requests is built with one
``np.concatenate`` per input along the batch axis, into one contiguous array (on CUDA,
into a pinned staging buffer the executor provides). Requests of one batch share a
*shape key* (same non-batch dimensions, same optional inputs present), so they
concatenate -- except on the variable (``-1``) dimensions of inputs declared
``allow_ragged_batch``, which the key ignores. Those inputs are padded: the batch array
takes, on each variable axis, the longest length in the batch and is filled with
``BatchingSpec.ragged_pad_value``; each request's data is copied into its corner.

Outputs. The model's result is first checked against the config
(:mod:`batchwire.batching.outputs`: every declared output and no other, each with the
declared shape -- batch axis equal to the batch's item count -- and exactly the declared
datatype); a mismatch fails the batch with :class:`OutputError` naming the output,
expected versus got. Each output is then converted to numpy once per batch
(``to_numpy``; no cast happens, the datatype already matches) and split into
per-request views along the batch axis (no copies).

Shapes: the batch carries the config's ``dims`` (batch first); a tensor's ``reshape``
is the runner's business (the repository's runners apply it on the way in and undo it
on the way out), so nothing here reshapes.

Ragged slicing rule. When a batch was padded, each output axis ``k`` (counting the batch
axis as 0) that the output spec declares ``-1`` and whose size equals the padded length
of a padded input axis (the first such in input order, then axis order) is sliced, per
request, back to that request's own length on the matched input axis. Output axes that
match no padded length are returned as the model produced them.

``BatchRecord.padded_size`` for a padded batch is the item count scaled by the padding
overhead of the ragged inputs: ``ceil(items * padded_elements / real_elements)`` (equal
to the item count when nothing was padded).

Concurrency: :meth:`Assembler.shape_key` runs on the event-loop thread; ``assemble`` and
``split`` run in an instance's worker thread. The assembler itself is immutable after
construction; per-batch state lives in :class:`AssembledBatch`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch

from batchwire.batching.outputs import OutputChecker, OutputError
from batchwire.core.torch_tensors import to_numpy

if TYPE_CHECKING:
    from batchwire.core.spec import ModelSpec
    from batchwire.core.types import InferenceRequest

__all__ = ["AssembledBatch", "Assembler", "OutputError"]

#: Staging allocator: (input name, shape, numpy dtype) -> writable array to fill.
Allocator = Callable[[str, tuple[int, ...], np.dtype], np.ndarray]


class AssembledBatch:
    """Host-side batch inputs plus what is needed to split the outputs again."""

    __slots__ = ("host", "padded_size", "pads", "sizes", "total")

    def __init__(self, host: dict[str, np.ndarray], sizes: Sequence[int], total: int) -> None:
        #: Input name -> array in the shape the model sees (batch first when batching).
        self.host = host
        self.sizes = sizes
        self.total = total
        self.padded_size = total
        #: (padded length, per-request lengths) of every padded input axis, in input order.
        self.pads: list[tuple[int, list[int]]] = []


def _pad_scalar(value: float, datatype: str) -> object:
    if datatype == "BYTES":
        return b""
    if datatype == "BF16":
        return int(torch.tensor(value, dtype=torch.bfloat16).view(torch.uint16).item())
    if datatype == "BOOL":
        return bool(value)
    return value


class Assembler:
    """Stacks/pads request inputs and splits/slices outputs for one model spec."""

    def __init__(self, spec: ModelSpec) -> None:
        self.batched = spec.max_batch_size > 0
        pad_value = spec.batching.ragged_pad_value if spec.batching is not None else 0.0
        #: (name, ragged tail axes, pad value)
        self._inputs: list[tuple[str, tuple[int, ...], object]] = []
        #: (name, tail axes ignored by the shape key)
        self._key_parts: list[tuple[str, tuple[int, ...]]] = []
        for t in spec.inputs:
            ragged: tuple[int, ...] = ()
            if self.batched and t.allow_ragged_batch:
                ragged = tuple(i for i, d in enumerate(t.dims) if d == -1)
            self._inputs.append((t.name, ragged, _pad_scalar(pad_value, t.datatype)))
            self._key_parts.append((t.name, ragged))
        #: True when every request has the same non-batch shapes: the shape key is constant.
        self.fixed_key = all(-1 not in t.dims and not t.optional for t in spec.inputs)
        #: (name, datatype, variable axes counting the batch axis)
        self._outputs: list[tuple[str, str, tuple[int, ...]]] = []
        for t in spec.outputs:
            offset = 1 if self.batched else 0
            var_axes = tuple(i + offset for i, d in enumerate(t.dims) if d == -1)
            self._outputs.append((t.name, t.datatype, var_axes))
        self.output_names = tuple(t.name for t in spec.outputs)
        self._checker = OutputChecker(spec)

    # -- loop thread ---------------------------------------------------------------

    def shape_key(self, inputs: dict[str, np.ndarray]) -> Hashable:
        """Requests batch together only when their keys are equal."""
        key: list[tuple[int, ...] | None] = []
        for name, ignored in self._key_parts:
            array = inputs.get(name)
            if array is None:
                key.append(None)
            elif ignored:
                tail = list(array.shape[1:])
                for axis in ignored:
                    tail[axis] = -1
                key.append(tuple(tail))
            else:
                key.append(array.shape[1:])
        return tuple(key)

    # -- worker thread -------------------------------------------------------------

    def assemble(
        self,
        requests: Sequence[InferenceRequest],
        sizes: Sequence[int],
        alloc: Allocator | None = None,
    ) -> AssembledBatch:
        """The batch's inputs as host arrays (copied into ``alloc``'s buffers when given)."""
        total = sum(sizes)
        if len(requests) == 1:
            return self._single(requests[0].inputs, sizes, total, alloc)
        batch = AssembledBatch({}, sizes, total)
        host = batch.host
        present = requests[0].inputs
        real = padded = 0
        for name, ragged, pad in self._inputs:
            if name not in present:
                continue
            arrays = [r.inputs[name] for r in requests]
            if ragged:
                stacked, pads = self._pad(arrays, sizes, total, ragged, pad, name, alloc)
                if pads:
                    batch.pads.extend(pads)
                    real += sum(a.size for a in arrays)
                    padded += stacked.size
                    host[name] = stacked
                    continue
            first = arrays[0]
            out = None
            if alloc is not None and first.dtype.kind != "O":
                out = alloc(name, (total, *first.shape[1:]), first.dtype)
            stacked = np.concatenate(arrays, axis=0, out=out)
            host[name] = stacked
        if padded > real > 0:
            batch.padded_size = math.ceil(total * padded / real)
        return batch

    def _single(
        self,
        inputs: dict[str, np.ndarray],
        sizes: Sequence[int],
        total: int,
        alloc: Allocator | None,
    ) -> AssembledBatch:
        if alloc is None:
            return AssembledBatch(inputs, sizes, total)
        host = {}
        for name, array in inputs.items():
            if array.dtype.kind != "O":
                staged = alloc(name, array.shape, array.dtype)
                staged[...] = array
                array = staged
            host[name] = array
        return AssembledBatch(host, sizes, total)

    @staticmethod
    def _pad(
        arrays: list[np.ndarray],
        sizes: Sequence[int],
        total: int,
        ragged: tuple[int, ...],
        pad: object,
        name: str,
        alloc: Allocator | None,
    ) -> tuple[np.ndarray, list[tuple[int, list[int]]]]:
        tail = list(arrays[0].shape[1:])
        pads = []
        for axis in ragged:
            lengths = [a.shape[axis + 1] for a in arrays]
            longest = max(lengths)
            tail[axis] = longest
            if min(lengths) != longest:
                pads.append((longest, lengths))
        if not pads:
            return arrays[0], pads
        shape = (total, *tail)
        dtype = arrays[0].dtype
        out = alloc(name, shape, dtype) if alloc is not None and dtype.kind != "O" else None
        if out is None:
            out = np.empty(shape, dtype)
        out.fill(pad)
        offset = 0
        for array, size in zip(arrays, sizes, strict=True):
            region = (slice(offset, offset + size), *(slice(0, n) for n in array.shape[1:]))
            out[region] = array
            offset += size
        return out, pads

    def split(
        self,
        outputs: object,
        batch: AssembledBatch,
        requests: Sequence[InferenceRequest],
    ) -> list[dict[str, np.ndarray]]:
        """Validate the model's outputs and cut them into one dict per request."""
        checked = self._checker.check(outputs, batch.total)
        converted: dict[str, np.ndarray] = {}
        var_axes_of: dict[str, tuple[int, ...]] = {}
        for name, datatype, var_axes in self._outputs:
            converted[name] = to_numpy(checked[name], datatype)
            var_axes_of[name] = var_axes
        names_all = self.output_names
        if len(requests) == 1:
            names = requests[0].requested_outputs or names_all
            return [{name: converted[name] for name in names}]
        slicers = self._slicers(converted, var_axes_of, batch) if batch.pads else {}
        results = []
        offset = 0
        for index, (request, size) in enumerate(zip(requests, batch.sizes, strict=True)):
            rows = slice(offset, offset + size)
            offset += size
            out = {}
            for name in request.requested_outputs or names_all:
                cut = slicers.get(name)
                if cut is None:
                    out[name] = converted[name][rows]
                else:
                    # A tuple built apart from the subscript: mypy reads ``a[(x, *y)]`` as
                    # ``a[x, *y]`` (Python 3.11 syntax) when targeting 3.10.
                    where = (rows, *cut[index])
                    out[name] = converted[name][where]
            results.append(out)
        return results

    @staticmethod
    def _slicers(
        converted: dict[str, np.ndarray],
        var_axes_of: dict[str, tuple[int, ...]],
        batch: AssembledBatch,
    ) -> dict[str, list[tuple[slice, ...]]]:
        """Per output, per request: the slices (after the batch axis) undoing the padding."""
        count = len(batch.sizes)
        slicers: dict[str, list[tuple[slice, ...]]] = {}
        for name, var_axes in var_axes_of.items():
            if not var_axes:
                continue
            shape = converted[name].shape
            per_axis: dict[int, list[int]] = {}
            for axis in var_axes:
                if axis >= len(shape):
                    continue
                for longest, lengths in batch.pads:
                    if shape[axis] == longest:
                        per_axis[axis] = lengths
                        break
            if not per_axis:
                continue
            last = max(per_axis)
            cuts = []
            for index in range(count):
                cuts.append(
                    tuple(
                        slice(0, per_axis[axis][index]) if axis in per_axis else slice(None)
                        for axis in range(1, last + 1)
                    )
                )
            slicers[name] = cuts
        return slicers
