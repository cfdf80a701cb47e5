"""How config tensors meet a PyTorch module's ``forward`` arguments and results.

Inputs follow Triton's PyTorch backend:

1. when every input is named ``<anything>__<i>`` (``INPUT__0``), input ``i``
   is forward's positional argument ``i``;
2. otherwise, when every input name is a forward argument name, inputs go to
   the arguments of the same name;
3. otherwise inputs go positionally in config order.

Outputs: a single tensor is the single output; a tuple or list maps
positionally (by ``__<i>`` index when every output is named so, else in
config order); a dict maps by name and must hold exactly the declared outputs (a
name the config does not declare is an error, never silently dropped). A mismatch
raises a
:class:`~batchwire.core.errors.ModelExecutionError` naming what was expected
and what the model returned.

``reshape`` (Triton's: the model sees ``reshape`` instead of ``dims``) is
applied here, at the model boundary, on the way in and on the way out; it is
a no-op on tensors that already have the target shape.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from batchwire.core.errors import ModelExecutionError
from batchwire.core.model import TensorDict
from batchwire.core.spec import ModelSpec, TensorSpec
from batchwire.server.repository.errors import load_error, one_of

_INDEXED = re.compile(r".*__(\d+)")


def indexed_positions(names: Sequence[str]) -> list[int] | None:
    """Each name's ``__<i>`` index when every name follows the convention, else None."""
    positions = []
    for name in names:
        match = _INDEXED.fullmatch(name)
        if match is None:
            return None
        positions.append(int(match.group(1)))
    return positions


@dataclass(frozen=True, slots=True)
class InputBinding:
    """Config input name for each positional forward argument (None: pass None)."""

    order: tuple[str | None, ...]
    #: How the order was chosen, for logs: "index", "argument names" or "config order".
    rule: str


def bind_inputs(spec: ModelSpec, arg_names: Sequence[str] | None, where: object) -> InputBinding:
    """Decide which config input feeds which argument; raises ModelLoadError if impossible."""
    names = [tensor.name for tensor in spec.inputs]
    positions = indexed_positions(names)
    if positions is not None:
        if len(set(positions)) != len(positions):
            raise load_error(
                where,
                "input",
                f"inputs {one_of(names)} repeat a __<index> (expected each index once)",
            )
        order: list[str | None] = [None] * (max(positions) + 1)
        for name, position in zip(names, positions, strict=True):
            order[position] = name
        binding = InputBinding(tuple(order), "index")
    elif arg_names is not None and set(names) <= set(arg_names):
        last = max(arg_names.index(name) for name in names)
        binding = InputBinding(
            tuple(arg if arg in names else None for arg in arg_names[: last + 1]), "argument names"
        )
    else:
        binding = InputBinding(tuple(names), "config order")
    if arg_names is not None and len(binding.order) > len(arg_names):
        raise load_error(
            where,
            "input",
            f"forward() takes {len(arg_names)} argument(s) ({one_of(arg_names) or 'none'}) "
            f"but the inputs need {len(binding.order)} (by {binding.rule}: {one_of(names)})",
        )
    return binding


def _batch_prefix(spec: ModelSpec, value: torch.Tensor | np.ndarray) -> tuple[int, ...]:
    return (int(value.shape[0]),) if spec.batched and value.ndim else ()


def _reshape(value: torch.Tensor | np.ndarray, shape: tuple[int, ...]):
    return value if tuple(value.shape) == shape else value.reshape(shape)


def reshape_input(spec: ModelSpec, tensor: TensorSpec, value: torch.Tensor | np.ndarray):
    """``value`` in the shape the model sees (``reshape`` when the config sets one)."""
    if tensor.reshape is None:
        return value
    return _reshape(value, _batch_prefix(spec, value) + tensor.reshape)


def reshape_output(spec: ModelSpec, tensor: TensorSpec, value: torch.Tensor | np.ndarray):
    """``value`` back in the config's ``dims`` (when the output has a ``reshape``)."""
    if tensor.reshape is None or list(tensor.dims).count(-1) > 1:
        return value  # with two unknown dims the original shape cannot be recovered
    return _reshape(value, _batch_prefix(spec, value) + tensor.dims)


def positional_args(
    spec: ModelSpec, binding: InputBinding, inputs: TensorDict
) -> list[torch.Tensor | np.ndarray | None]:
    """The forward() arguments for one batch, in binding order."""
    args: list[torch.Tensor | np.ndarray | None] = []
    for name in binding.order:
        value = inputs.get(name) if name is not None else None
        if value is not None:
            value = reshape_input(spec, spec.input_map[name], value)  # type: ignore[index]
        args.append(value)
    return args


def _check_value(value: object, name: str, where: object) -> torch.Tensor | np.ndarray:
    if not isinstance(value, torch.Tensor | np.ndarray):
        raise ModelExecutionError(
            f"{where}: output '{name}': the model returned a {type(value).__name__} "
            "(expected a tensor)"
        )
    return value


def bind_outputs(spec: ModelSpec, result: object, where: object) -> TensorDict:
    """Name the model's result by the config outputs (and undo their reshape)."""
    names = [tensor.name for tensor in spec.outputs]
    if isinstance(result, torch.Tensor | np.ndarray):
        if len(names) != 1:
            raise ModelExecutionError(
                f"{where}: the model returned 1 tensor but the config declares "
                f"{len(names)} outputs ({one_of(names)}); expected a tuple or dict of them"
            )
        outputs = {names[0]: result}
    elif isinstance(result, tuple | list):
        positions = indexed_positions(names)
        if positions is not None:
            if max(positions) >= len(result):
                raise ModelExecutionError(
                    f"{where}: the model returned {len(result)} values but output "
                    f"'{names[positions.index(max(positions))]}' needs index {max(positions)} "
                    f"(expected at least {max(positions) + 1} values)"
                )
            outputs = {name: result[i] for name, i in zip(names, positions, strict=True)}
        else:
            if len(result) != len(names):
                raise ModelExecutionError(
                    f"{where}: the model returned {len(result)} values but the config declares "
                    f"{len(names)} outputs ({one_of(names)})"
                )
            outputs = dict(zip(names, result, strict=True))
    elif isinstance(result, Mapping):
        missing = [name for name in names if name not in result]
        if missing:
            raise ModelExecutionError(
                f"{where}: the model's result has no output(s) {one_of(missing)} "
                f"(got keys {one_of(result) or 'none'})"
            )
        if len(result) != len(names):
            undeclared = [str(key) for key in result if key not in spec.output_map]
            raise ModelExecutionError(
                f"{where}: the model returned output(s) {one_of(undeclared)} that the config "
                f"does not declare (declared: {one_of(names)})"
            )
        outputs = {name: result[name] for name in names}
    else:
        raise ModelExecutionError(
            f"{where}: the model returned a {type(result).__name__} "
            "(expected a tensor, a tuple/list of tensors or a dict of tensors)"
        )
    return {
        name: reshape_output(spec, spec.output_map[name], _check_value(value, name, where))
        for name, value in outputs.items()
    }
