"""``batchwire drift``: build a model version's drift reference profile from reference data.

``batchwire drift profile --model-repository R --model M --data FILE.npz`` writes
``R/M/<version>/drift_profile.json`` (see :mod:`batchwire.telemetry.drift_profile` for
what a profile holds). The rules:

- The version is ``--version``, or the highest version folder of the model (whatever
  its version policy serves).
- ``FILE.npz`` (read with ``allow_pickle=False``) holds one array per input, named as
  in the config, batch-first: ``N`` items, then the config's dims (``-1`` matching any
  length), of the config's datatype. Optional inputs may be left out. Arrays named
  after outputs are taken as the outputs of those items; every output left out is
  computed by loading the version in this process on the CPU and running the inputs
  through it, ``max_batch_size`` items at a time (one at a time, without a batch
  dimension, for a model with ``max_batch_size`` 0). An input with a variable dim
  (``-1``) cannot be run that way (the file cannot say where each request's padding
  is), so the outputs must then be in the file.
- Tensors with a variable dim are pooled (one feature, ``*``); ``--class-scores``
  names outputs profiled as top-1 class frequencies; every other tensor has one
  feature per element up to ``--max-features`` elements per item, and is pooled above.

Exit status: 0 when the profile was written; 2 for anything wrong with the options,
the model, the version or the data, in one line on stderr naming what was expected
and what was found; 1 when the server dependencies are not installed. Importing this
module loads neither torch nor the model repository: they are imported by the command.
"""

from __future__ import annotations

import dataclasses
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, NoReturn

import numpy as np
import typer

from batchwire.clients.cli import CONTEXT_SETTINGS, HelpCommand, HelpGroup

if TYPE_CHECKING:
    from batchwire.core.spec import ModelSpec, TensorSpec
    from batchwire.server.repository import ModelRepository
    from batchwire.server.repository.source import ModelVersionSource

__all__ = ["drift_app"]

drift_app = typer.Typer(
    help="Drift statistics: reference profiles of model versions.",
    no_args_is_help=True,
    cls=HelpGroup,
    rich_markup_mode=None,
    context_settings=CONTEXT_SETTINGS,
)


@drift_app.callback()
def _drift() -> None:
    """Drift statistics: reference profiles of model versions."""


def _fail(message: str, status: int = 2) -> NoReturn:
    typer.echo(f"batchwire: {message}", err=True)
    raise typer.Exit(status)


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    expected = "expected an .npz file of named arrays (numpy.savez)"
    try:
        loaded = np.load(path, allow_pickle=False)
        if not isinstance(loaded, np.lib.npyio.NpzFile):
            _fail(f"{path}: {expected}, got a single {type(loaded).__name__}")
        with loaded as npz:
            return {name: npz[name] for name in npz.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        _fail(f"{path}: {expected}, got: {exc}")


def _shape_text(items: str, dims: tuple[int, ...]) -> str:
    return "(" + ", ".join([items, *("any" if d == -1 else str(d) for d in dims)]) + ")"


def _check_array(data: Path, tensor: TensorSpec, array: np.ndarray, items: int) -> None:
    from batchwire.core.datatypes import NUMPY_DTYPES

    shape = array.shape
    fits = (
        len(shape) == len(tensor.dims) + 1
        and shape[0] == items
        and all(d in (-1, s) for d, s in zip(tensor.dims, shape[1:], strict=True))
    )
    if not fits:
        _fail(
            f"{tensor.name} in {data}: expected shape {_shape_text(str(items), tensor.dims)} "
            f"(N items, then the config dims {list(tensor.dims)}), got {shape}"
        )
    dtype = NUMPY_DTYPES[tensor.datatype]
    if tensor.datatype in ("BYTES", "BF16") or array.dtype != dtype:
        _fail(
            f"{tensor.name} in {data}: expected {dtype} ({tensor.datatype}, a datatype with "
            f"numeric values), got {array.dtype}"
        )


def _version_source(repo: ModelRepository, model: str, version: str | None) -> ModelVersionSource:
    from batchwire.server.repository.versions import available_versions

    entry = repo.discover_model(model)
    if not entry.ok:
        _fail(f"model '{model}' in {repo.root}: {entry.error}")
    numbers = sorted(available_versions(entry.path))
    chosen = str(numbers[-1]) if version is None else version
    if chosen not in {str(n) for n in numbers}:
        _fail(
            f"model '{model}' has no version {chosen}; expected one of "
            f"{', '.join(str(n) for n in numbers)}"
        )
    for source in entry.versions:
        if source.version == chosen:
            return source
    # A version folder the version policy does not serve: the same config, that folder.
    base = entry.versions[0]
    return dataclasses.replace(
        base,
        version=chosen,
        path=entry.path / chosen,
        spec=dataclasses.replace(base.spec, version=chosen),
    )


def _run_model(
    repo: ModelRepository,
    source: ModelVersionSource,
    inputs: Mapping[str, np.ndarray],
    wanted: list[str],
) -> dict[str, np.ndarray]:
    """The ``wanted`` outputs of ``inputs`` (N items each), from the version on the CPU."""
    import torch

    from batchwire.core.errors import ModelLoadError

    if not source.model_file.is_file():
        _fail(f"{source.model_file}: model file not found (version {source.version})")
    try:
        runner = repo.load(source).create_runner(torch.device("cpu"), 0)
    except ModelLoadError as exc:
        _fail(f"model '{source.name}' version {source.version} failed to load: {exc}")
    spec = source.spec
    items = len(next(iter(inputs.values())))
    step = spec.max_batch_size or 1
    parts: dict[str, list[np.ndarray]] = {name: [] for name in wanted}
    with torch.inference_mode():
        for start in range(0, items, step):  # one chunk per batch the model accepts
            if spec.batched:
                batch = {
                    k: np.ascontiguousarray(v[start : start + step]) for k, v in inputs.items()
                }
            else:
                batch = {k: np.ascontiguousarray(v[start]) for k, v in inputs.items()}
            try:
                result = runner({k: torch.from_numpy(v) for k, v in batch.items()})
            except Exception as exc:  # the model's own failure, whatever its type
                _fail(
                    f"model '{source.name}' version {source.version} failed on reference "
                    f"items {start}..{min(start + step, items) - 1}: {exc}"
                )
            for name in wanted:
                raw = result[name]
                value = raw.detach().cpu().numpy() if isinstance(raw, torch.Tensor) else raw
                parts[name].append(value if spec.batched else value[None])
    try:
        return {name: np.concatenate(chunks) for name, chunks in parts.items()}
    except ValueError as exc:
        _fail(f"the outputs of model '{source.name}' differ in shape between batches: {exc}")


@drift_app.command("profile", cls=HelpCommand, context_settings=CONTEXT_SETTINGS)
def profile(
    model_repository: Annotated[
        Path,
        typer.Option("--model-repository", metavar="<path>", help="The model repository folder."),
    ],
    model: Annotated[str, typer.Option("--model", metavar="<name>", help="The model's name.")],
    data: Annotated[
        Path,
        typer.Option(
            "--data",
            metavar="<file.npz>",
            help="Reference data: one batch-first array per input (outputs optional), "
            "named as in the config.",
        ),
    ],
    version: Annotated[
        str | None,
        typer.Option(
            "--version", metavar="<n>", help="The version (default: the highest version folder)."
        ),
    ] = None,
    bins: Annotated[
        int, typer.Option("--bins", metavar="<n>", min=2, help="Bins per feature.")
    ] = 10,
    class_scores: Annotated[
        list[str] | None,
        typer.Option(
            "--class-scores",
            metavar="<output>",
            help="An output of class scores: profile its top-1 class frequencies. Repeatable.",
        ),
    ] = None,
    max_features: Annotated[
        int,
        typer.Option(
            "--max-features",
            metavar="<n>",
            min=1,
            help="Tensors with more elements per item are pooled into one feature.",
        ),
    ] = 1024,
    output: Annotated[
        Path | None,
        typer.Option(
            "--output",
            metavar="<path>",
            help="Where to write the profile (default: drift_profile.json in the version folder).",
        ),
    ] = None,
) -> None:
    """Build a model version's drift reference profile from reference data."""
    try:
        from batchwire.server.repository import ModelRepository
        from batchwire.telemetry.drift_profile import (
            PROFILE_FILE,
            build_profile,
            check_profile,
            save_profile,
        )
    except ModuleNotFoundError as exc:
        _fail(
            "batchwire drift profile needs the server dependencies: "
            f"pip install 'batchwire[server]' (missing: {exc.name})",
            status=1,
        )
    if not model_repository.is_dir():
        _fail(f"{model_repository}: expected a model repository folder, found none")
    arrays = _read_npz(data)
    repo = ModelRepository(model_repository)
    source = _version_source(repo, model, version)
    spec: ModelSpec = source.spec
    unknown = sorted(set(arrays) - set(spec.input_map) - set(spec.output_map))
    if unknown:
        _fail(
            f"{data}: array(s) {', '.join(unknown)} name no tensor of model '{model}'; expected "
            f"inputs {', '.join(spec.input_map)} and outputs {', '.join(spec.output_map)}"
        )
    missing = [t.name for t in spec.inputs if t.name not in arrays and not t.optional]
    if missing:
        _fail(
            f"{data}: expected an array for input(s) {', '.join(missing)} of model '{model}', "
            f"got only {', '.join(arrays) or 'none'}"
        )
    items = {name: a.shape[0] if a.ndim else 0 for name, a in arrays.items()}
    if len(set(items.values())) != 1 or min(items.values()) < 1:
        found = ", ".join(f"{name}: {n}" for name, n in items.items())
        _fail(f"{data}: expected the same number N >= 1 of items in every array, got {found}")
    n = next(iter(items.values()))
    tensors = {**spec.output_map, **spec.input_map}
    for name, array in arrays.items():
        _check_array(data, tensors[name], array, n)
    chosen_scores = list(class_scores or ())
    not_outputs = [name for name in chosen_scores if name not in spec.output_map]
    if not_outputs:
        _fail(
            f"--class-scores {', '.join(not_outputs)}: expected outputs of model '{model}' "
            f"({', '.join(spec.output_map)})"
        )
    inputs = {t.name: arrays[t.name] for t in spec.inputs if t.name in arrays}
    outputs = {t.name: arrays[t.name] for t in spec.outputs if t.name in arrays}
    absent = [t.name for t in spec.outputs if t.name not in arrays]
    if absent:
        variable = [t.name for t in spec.inputs if t.name in inputs and -1 in t.dims]
        if variable:
            _fail(
                f"input(s) {', '.join(variable)} of model '{model}' have variable dims, so the "
                f"outputs cannot be computed from {data}; expected arrays for output(s) "
                f"{', '.join(absent)} in it"
            )
        outputs.update(_run_model(repo, source, inputs, absent))
        outputs = {t.name: outputs[t.name] for t in spec.outputs}
    pooled = [name for name in arrays.keys() | outputs.keys() if -1 in tensors[name].dims]
    try:
        built = build_profile(
            inputs,
            outputs,
            bins=bins,
            class_scores=chosen_scores,
            max_features=max_features,
            pooled=pooled,
        )
    except ValueError as exc:
        _fail(f"cannot profile {data}: {exc}")
    problems = check_profile(built, spec)
    if problems:
        _fail(f"the profile does not fit model '{model}': {'; '.join(problems)}")
    path = output if output is not None else source.path / PROFILE_FILE
    try:
        save_profile(built, path)
    except OSError as exc:
        _fail(f"{path}: cannot write the profile: {exc.strerror}")
    typer.echo(
        f"wrote {path}: model '{model}' version {source.version}, "
        f"{built.reference_items} reference items, {built.bins} bins"
    )
    for t in built.tensors.values():
        if t.kind == "classes":
            what = f"top-1 frequencies of {t.classes} classes"
        elif t.pooled:
            what = "pooled (one feature)"
        else:
            what = f"{len(t.features)} features"
        role = "input" if t.name in spec.input_map else "output"
        typer.echo(f"  {role} {t.name}: {what}")
