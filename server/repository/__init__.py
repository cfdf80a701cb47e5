"""The model repository: find models on disk, validate their configs, load them.

* :class:`ModelRepository` discovers ``<root>/<model>/config.pbtxt`` and
  version folders and loads versions into :class:`~batchwire.core.model.Model`
  objects (TorchScript ``model.pt``, torch.export ``model.pt2``, python
  ``model.py``; pickled modules only with ``allow_pickle``);
* :func:`load_config` / :func:`config_to_spec` read one config into a filled
  ``ModelConfig`` and a :class:`~batchwire.core.spec.ModelSpec`;
"""

from batchwire.server.repository.config import load_config, parse_config_text
from batchwire.server.repository.convert import config_to_spec
from batchwire.server.repository.loaders import load_model
from batchwire.server.repository.platforms import Format
from batchwire.server.repository.repository import ModelRepository
from batchwire.server.repository.source import ModelEntry, ModelVersionSource
from batchwire.server.repository.versions import available_versions, select_versions

__all__ = [
    "Format",
    "ModelEntry",
    "ModelRepository",
    "ModelVersionSource",
    "available_versions",
    "config_to_spec",
    "load_config",
    "load_model",
    "parse_config_text",
    "select_versions",
]
