"""Checking what a model returned against the outputs its config declares.

A model's outputs are checked once per batch, after the runner returns and before
anything is converted or split; the first mismatch fails every request of the batch
with :class:`OutputError` (``ModelExecutionError``, gRPC INTERNAL), never a silent
cast or a response whose shape contradicts ModelMetadata. The rules, per batch:

- the result is a dict holding every output the config declares and no other name
  (requested-output subsets are cut later, per request: the model always returns all);
- each value is a ``torch.Tensor`` or a numpy array;
- shape: as many axes as ``dims`` (plus the batch axis when ``max_batch_size > 0``);
  the batch axis equals the batch's item count; every fixed dim equals the config's,
  ``-1`` accepts any length. An output whose ``reshape`` cannot be undone (``dims``
  with more than one ``-1``: the runner hands it back in the reshape's shape) is also
  accepted in the ``reshape`` shape;
- datatype: exactly the config's ``data_type``. A tensor's torch dtype is that
  datatype's (``torch.bfloat16`` for BF16); a numpy array's dtype is its storage dtype
  (``uint16`` for BF16), and TYPE_STRING (BYTES) outputs are numpy arrays of
  ``bytes``/``str`` (object, ``S`` or ``U`` dtype). No cast is made: float64 for an FP32
  output is an error naming both.

Messages name the model, version and output, the returned shape or datatype and the
expected one with the config values it follows from, for example::

    model 'bad' version '1': output 'OUT' has shape [2, 4], expected [2, 3]
    (config dims [3] and batch size 2)

Cost: per output, one ``len`` and a few integer comparisons against tuples built at
load, plus one dtype identity/equality test; strings are built only on the error path.
The checker is immutable after construction; :meth:`OutputChecker.check` runs in an
instance's worker thread (or the loop thread for inline batches).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

import numpy as np
import torch

from batchwire.core.datatypes import NUMPY_DTYPES, V2_TO_CONFIG, v2_of_numpy
from batchwire.core.errors import ModelExecutionError
from batchwire.core.torch_tensors import TORCH_DTYPES, v2_of_torch

if TYPE_CHECKING:
    from batchwire.core.spec import ModelSpec, TensorSpec

__all__ = ["OutputChecker", "OutputError"]


class OutputError(ModelExecutionError):
    """The model returned outputs that do not match its config (never retried)."""


#: Numpy dtype kinds a BYTES output may come back as: object (bytes/str), bytes, str.
_BYTES_KINDS = "OSU"


class _Shape:
    """One acceptable shape of an output: its rank and its fixed axes (batch axis first)."""

    __slots__ = ("dims", "fixed", "rank")

    def __init__(self, dims: tuple[int, ...], batched: bool) -> None:
        offset = 1 if batched else 0
        self.dims = dims
        self.rank = len(dims) + offset
        #: (axis counting the batch axis, required length) for every dim that is not -1.
        self.fixed = tuple((axis + offset, d) for axis, d in enumerate(dims) if d != -1)

    def matches(self, shape: tuple[int, ...], batched: bool, total: int) -> bool:
        if len(shape) != self.rank or (batched and shape[0] != total):
            return False
        for axis, size in self.fixed:  # noqa: SIM110 (a loop: no generator per batch)
            if shape[axis] != size:
                return False
        return True


class _Output:
    """What one declared output must look like."""

    __slots__ = ("datatype", "name", "numpy_dtype", "shapes", "torch_dtype")

    def __init__(self, tensor: TensorSpec, batched: bool) -> None:
        self.name = tensor.name
        self.datatype = tensor.datatype
        self.torch_dtype = TORCH_DTYPES.get(tensor.datatype)  # None for BYTES
        self.numpy_dtype = NUMPY_DTYPES[tensor.datatype]
        shapes = [_Shape(tensor.dims, batched)]
        # Mirrors the repository's runners (torch_io.reshape_output): with two or more
        # -1 dims a reshape cannot be undone, so the output arrives in the reshape shape.
        if tensor.reshape is not None and tensor.dims.count(-1) > 1:
            shapes.append(_Shape(tensor.reshape, batched))
        self.shapes = tuple(shapes)

    def dtype_ok(self, value: torch.Tensor | np.ndarray) -> bool:
        if isinstance(value, torch.Tensor):
            return value.dtype == self.torch_dtype
        if self.torch_dtype is None:
            return value.dtype.kind in _BYTES_KINDS
        return value.dtype == self.numpy_dtype


class OutputChecker:
    """Checks a model's result against its spec's outputs (see the module docstring)."""

    def __init__(self, spec: ModelSpec) -> None:
        self._where = f"model '{spec.name}' version '{spec.version}'"
        self._batched = spec.max_batch_size > 0
        self._outputs = tuple(_Output(t, self._batched) for t in spec.outputs)
        self._names = tuple(t.name for t in spec.outputs)

    def check(self, outputs: object, total: int) -> Mapping[str, torch.Tensor | np.ndarray]:
        """``outputs`` as a mapping once it matches the spec; raises OutputError if not.

        ``total``: the batch's item count (the batch axis's required length; unused for
        models that do not batch).
        """
        if not isinstance(outputs, dict):
            raise OutputError(
                f"{self._where}: the model returned {type(outputs).__name__}, "
                "expected a dict of output name -> tensor"
            )
        batched = self._batched
        for out in self._outputs:
            value = outputs.get(out.name)
            if value is None:
                returned = ", ".join(sorted(map(str, outputs))) or "nothing"
                raise OutputError(
                    f"{self._where}: the model did not return output '{out.name}' "
                    f"(expected {', '.join(self._names)}; got {returned})"
                )
            if not isinstance(value, torch.Tensor | np.ndarray):
                raise OutputError(
                    f"{self._where}: output '{out.name}' is a {type(value).__name__}, "
                    "expected a torch.Tensor or numpy array"
                )
            shape = value.shape
            for accepted in out.shapes:
                if accepted.matches(shape, batched, total):
                    break
            else:
                raise OutputError(self._shape_message(out, tuple(shape), total))
            if not out.dtype_ok(value):
                raise OutputError(self._dtype_message(out, value))
        if len(outputs) != len(self._outputs):
            extra = sorted(str(name) for name in outputs if name not in self._names)
            raise OutputError(
                f"{self._where}: the model returned output(s) {', '.join(extra)} that the "
                f"config does not declare (declared: {', '.join(self._names)})"
            )
        return outputs

    # -- error path ----------------------------------------------------------------

    def _shape_message(self, out: _Output, shape: tuple[int, ...], total: int) -> str:
        batched = self._batched
        first = out.shapes[0]
        prefix = (total,) if batched else ()
        expected = " or ".join(_shape_text(prefix + accepted.dims) for accepted in out.shapes)
        config = f"config dims {list(first.dims)}"
        if len(out.shapes) > 1:
            config += f" (reshape {list(out.shapes[1].dims)})"
        if batched:
            config += f" and batch size {total}"
        got = _shape_text(shape) if shape else "[] (a scalar)"
        return f"{self._where}: output '{out.name}' has shape {got}, expected {expected} ({config})"

    def _dtype_message(self, out: _Output, value: torch.Tensor | np.ndarray) -> str:
        got = _datatype_text(value)
        return (
            f"{self._where}: output '{out.name}' has datatype {got}, expected {out.datatype} "
            f"(config data_type {V2_TO_CONFIG[out.datatype]}; "
            f"{_expected_dtype_text(out)}); outputs are not cast"
        )


def _shape_text(shape: tuple[int, ...]) -> str:
    return "[" + ", ".join(str(int(d)) for d in shape) + "]"


def _datatype_text(value: torch.Tensor | np.ndarray) -> str:
    """'FP64 (torch.float64)', 'FP64 (numpy float64)', or the raw dtype when v2 has none."""
    if isinstance(value, torch.Tensor):
        try:
            return f"{v2_of_torch(value.dtype)} ({value.dtype})"
        except ValueError:
            return f"{value.dtype} (no KServe v2 datatype)"
    try:
        return f"{v2_of_numpy(value.dtype)} (numpy {value.dtype})"
    except ValueError:
        return f"numpy {value.dtype} (no KServe v2 datatype)"


def _expected_dtype_text(out: _Output) -> str:
    if out.torch_dtype is None:
        return "a numpy array of bytes or str"
    return f"a {out.torch_dtype} tensor or numpy {out.numpy_dtype} array"
