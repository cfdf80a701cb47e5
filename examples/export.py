"""Write the example models as a model repository (TorchScript ``model.pt`` + config)."""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Callable, Iterable
from functools import partial
from pathlib import Path

import torch

from batchwire.examples.drift_reference import example_profile, reference_data
from batchwire.examples.models import EXAMPLE_NAMES, build_model, config_text, get_example
from batchwire.telemetry.drift_profile import PROFILE_FILE, build_profile, save_profile

# EXAMPLE_NAMES: what export_examples writes by default.
__all__ = [
    "CANARY_NAME",
    "EXAMPLE_NAMES",
    "EXAMPLE_VERSION",
    "export_canary",
    "export_example",
    "export_examples",
]

log = logging.getLogger(__name__)

#: The version folder every example is written to.
EXAMPLE_VERSION = "1"


def _write_atomically(path: Path, write: Callable[[Path], object]) -> None:
    # A server watching the repository must never see a half-written file.
    tmp = path.with_name(f".{path.name}.tmp")
    write(tmp)
    os.replace(tmp, path)


def export_example(dest: Path, name: str) -> Path:
    """Write ``<dest>/<name>/config.pbtxt`` and ``<dest>/<name>/1/model.pt`` (and, for the
    examples that ship one, ``1/drift_profile.json``); returns the model folder."""
    get_example(name)  # KeyError with the valid names before anything is written
    model_dir = Path(dest) / name
    version_dir = model_dir / EXAMPLE_VERSION
    version_dir.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        # TorchScript is deprecated upstream but it is the format Triton serves.
        warnings.filterwarnings("ignore", message=r"`torch\.jit\.\w+` is deprecated")
        scripted = torch.jit.script(build_model(name))
    _write_atomically(version_dir / "model.pt", lambda tmp: scripted.save(str(tmp)))
    # Before the config: a server watching the repository never sees the model without it.
    profile = example_profile(name)
    if profile is not None:
        save_profile(profile, version_dir / PROFILE_FILE)
    _write_atomically(
        model_dir / "config.pbtxt", lambda tmp: tmp.write_text(config_text(name), encoding="utf-8")
    )
    log.info("example '%s' written to %s", name, model_dir)
    return model_dir


def export_examples(dest: Path, names: Iterable[str] | None = None) -> list[str]:
    """Export the named examples (all by default) under ``dest``; returns their names."""
    chosen = list(EXAMPLE_NAMES if names is None else names)
    for name in chosen:
        get_example(name)  # validate every name before writing any
    for name in chosen:
        export_example(dest, name)
    return chosen


def _save_scripted(module: torch.nn.Module, path: Path) -> None:
    torch.jit.script(module).save(str(path))


#: The model :func:`export_canary` writes.
CANARY_NAME = "mlp_canary"

_CANARY_PARAMETERS = {
    # 90 % of the requests that name no version on version 1, 10 % on the canary.
    "batchwire.traffic": "1:90,2:10",
    # Every request version 1 answers also runs on version 2; the answers are compared.
    "batchwire.shadow": "2:100",
    "batchwire.shadow_tolerance": "1e-3",
    # Back to version 1 alone if the canary fails or disagrees too often.
    "batchwire.rollback": "error_ratio>0.05 over 200; disagreement>0.5 over 500",
}


def export_canary(dest: Path) -> Path:
    """Write ``<dest>/mlp_canary``: the mlp example as version 1, a retrained stand-in
    (other seeded weights) as version 2, with a 90/10 traffic split, version 2 shadowing
    version 1's requests, and a rollback gate (see the README's "Model versions")."""
    from batchwire.examples.models import MLP, _seeded_init

    model_dir = Path(dest) / CANARY_NAME
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"`torch\.jit\.\w+` is deprecated")
        for version, module in (("1", build_model("mlp")), ("2", _seeded_init(MLP(), 11).eval())):
            version_dir = model_dir / version
            version_dir.mkdir(parents=True, exist_ok=True)
            _write_atomically(version_dir / "model.pt", partial(_save_scripted, module))
            # Each version's profile: the mlp reference inputs and that version's answers,
            # so a canary's drift is measured against what it answered in testing.
            inputs, _ = reference_data("mlp")
            with torch.inference_mode():
                scores = module(torch.from_numpy(inputs["INPUT__0"])).numpy()
            profile = build_profile(inputs, {"OUTPUT__0": scores}, class_scores=("OUTPUT__0",))
            save_profile(profile, version_dir / PROFILE_FILE)
    config = config_text("mlp").replace('name: "mlp"', f'name: "{CANARY_NAME}"')
    config += "version_policy: { all: {} }\n"
    for key, value in _CANARY_PARAMETERS.items():
        config += f'parameters {{ key: "{key}" value: {{ string_value: "{value}" }} }}\n'
    _write_atomically(model_dir / "config.pbtxt", lambda tmp: tmp.write_text(config))
    log.info("example '%s' written to %s", CANARY_NAME, model_dir)
    return model_dir
