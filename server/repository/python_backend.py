"""Python models: ``<model>/<version>/model.py`` (backend ``python``).

Contract (also in ``docs/python-models.md``). ``model.py`` defines a class,
``BatchwireModel`` unless the config parameter ``batchwire.python_class``
names another, constructible without arguments::

    class BatchwireModel:
        def load(self, spec: ModelSpec, device: torch.device, instance_index: int) -> None:
            '''Optional. Called once per instance, on a worker thread, before any execute.'''

        def execute(self, inputs: dict[str, Tensor | ndarray]) -> dict[str, Tensor | ndarray]:
            '''Required. One batch: inputs keyed by config name, batch dimension first
            (when max_batch_size > 0), numeric inputs as torch tensors on ``device``,
            TYPE_STRING (BYTES) inputs as numpy object arrays of ``bytes``. Return every
            config output by name and no other name, batch dimension first, as a tensor (any device) or a
            numpy array (object arrays of bytes/str for TYPE_STRING outputs).'''

        def finalize(self) -> None:
            '''Optional. Called once per instance when the model is unloaded.'''

One object is created per instance; ``execute`` runs under
``torch.inference_mode()`` and is called by one thread at a time per instance
(instances may run concurrently, so shared module-level state needs a lock).
The file is imported once per model version, under a unique module name, so
two versions (or two models) may define the same class names.
"""

from __future__ import annotations

import importlib.util
import itertools
import logging
import sys
import threading
from pathlib import Path
from types import ModuleType

import torch

from batchwire.core.errors import ModelExecutionError
from batchwire.core.model import TensorDict
from batchwire.core.spec import ModelSpec
from batchwire.server.repository.errors import load_error
from batchwire.server.repository.params import PYTHON_CLASS
from batchwire.server.repository.torch_io import reshape_input, reshape_output

log = logging.getLogger(__name__)

_counter = itertools.count(1)


def _import(path: Path, spec: ModelSpec) -> ModuleType:
    safe = "".join(c if c.isalnum() else "_" for c in f"{spec.name}_v{spec.version}")
    module_name = f"_batchwire_model_{safe}_{next(_counter)}"
    import_spec = importlib.util.spec_from_file_location(module_name, path)
    if import_spec is None or import_spec.loader is None:
        raise load_error(path, "", "cannot be imported (not a Python source file?)")
    module = importlib.util.module_from_spec(import_spec)
    # Registered before running it, as a normal import would be, so that code which
    # looks itself up (dataclasses, pickle, typing) finds the module.
    sys.modules[module_name] = module
    try:
        import_spec.loader.exec_module(module)
    except BaseException as exc:
        sys.modules.pop(module_name, None)
        if isinstance(exc, KeyboardInterrupt | SystemExit):
            raise
        raise load_error(path, "", f"importing it failed: {type(exc).__name__}: {exc}") from exc
    return module


def _model_class(module: ModuleType, class_name: str, path: Path) -> type:
    cls = getattr(module, class_name, None)
    if not isinstance(cls, type):
        defined = sorted(
            name
            for name, value in vars(module).items()
            if isinstance(value, type) and value.__module__ == module.__name__
        )
        raise load_error(
            path,
            f"parameters['{PYTHON_CLASS}']",
            f"no class '{class_name}' in the file (expected a class named {class_name}; "
            f"the file defines {', '.join(defined) or 'no classes'})",
        )
    if not callable(getattr(cls, "execute", None)):
        raise load_error(path, class_name, "has no execute(self, inputs) method (expected one)")
    return cls


class PythonRunner:
    """One instance of a python model, bound to ``device``."""

    def __init__(self, instance: object, device: torch.device, spec: ModelSpec, where: str):
        self.device = device
        self._instance = instance
        self._spec = spec
        self._where = where

    def __call__(self, inputs: TensorDict) -> TensorDict:
        """Run one batch through the instance's execute()."""
        spec = self._spec
        inputs = {
            name: reshape_input(spec, spec.input_map[name], value)
            if name in spec.input_map
            else value
            for name, value in inputs.items()
        }
        with torch.inference_mode():
            result = self._instance.execute(inputs)  # type: ignore[attr-defined]
        if not isinstance(result, dict):
            raise ModelExecutionError(
                f"{self._where}: execute() returned a {type(result).__name__} "
                "(expected a dict of output name -> tensor)"
            )
        missing = [t.name for t in spec.outputs if t.name not in result]
        if missing:
            raise ModelExecutionError(
                f"{self._where}: execute() returned no output(s) {', '.join(missing)} "
                f"(got {', '.join(map(str, result)) or 'none'})"
            )
        if len(result) != len(spec.outputs):
            # Raised here, not dropped: the caller would never learn the model and its
            # config disagree (same wording as the batcher's output check).
            undeclared = [str(name) for name in result if name not in spec.output_map]
            raise ModelExecutionError(
                f"{self._where}: execute() returned output(s) {', '.join(undeclared)} that "
                f"the config does not declare (declared: {', '.join(t.name for t in spec.outputs)})"
            )
        return {t.name: reshape_output(spec, t, result[t.name]) for t in spec.outputs}


class PythonModel:
    """A python model version: its imported class, instantiated once per runner."""

    def __init__(self, spec: ModelSpec, path: Path, cls: type, module: ModuleType) -> None:
        self.spec = spec
        self.path = path
        self._cls = cls
        self._module = module
        self._instances: list[object] = []
        self._lock = threading.Lock()

    def create_runner(self, device: torch.device, instance_index: int) -> PythonRunner:
        """Construct the class and call its load(); raises ModelLoadError naming the file."""
        where = f"{self.spec.name} version {self.spec.version} ({self.path.name})"
        try:
            instance = self._cls()
            load = getattr(instance, "load", None)
            if callable(load):
                load(self.spec, torch.device(device), instance_index)
        except Exception as exc:
            raise load_error(
                self.path,
                self._cls.__name__,
                f"instance {instance_index} on {device} failed to load: "
                f"{type(exc).__name__}: {exc}",
            ) from exc
        with self._lock:
            self._instances.append(instance)
        return PythonRunner(instance, torch.device(device), self.spec, where)

    def close(self) -> None:
        """Call every instance's finalize() (errors are logged) and forget the module."""
        with self._lock:
            instances, self._instances = self._instances, []
        for instance in instances:
            finalize = getattr(instance, "finalize", None)
            if callable(finalize):
                try:
                    finalize()
                except Exception:
                    log.exception("%s: finalize() failed", self.path)
        sys.modules.pop(self._module.__name__, None)


def load_python(spec: ModelSpec, path: Path, class_name: str) -> PythonModel:
    """Import ``path`` and find its model class; raises ModelLoadError naming the file."""
    module = _import(path, spec)
    try:
        cls = _model_class(module, class_name, path)
    except Exception:
        sys.modules.pop(module.__name__, None)
        raise
    return PythonModel(spec, path, cls, module)
