"""Model definitions and the registry. One file per model family.

``create_model`` and ``model_entry`` take a registry name or any other model spec
(``package.module:callable``, ``torchvision:<name>``, ``timm:<name>``: see
:mod:`squeezebench.models.sources`)."""
import importlib
import pkgutil

from squeezebench.models._registry import InShape, ModelEntry, list_models, register_model
from squeezebench.models.sources import (
    ModelSourceError, ModelUnavailable, create_model, model_entry, resolve,
)

from squeezebench.models.reshape import apply_shapes, changed_shapes


def model_from_arch(arch: dict):
    """The module an artifact's ``arch.json`` describes: built from its spec and constructor
    arguments, then the layers a structured pruning resized (``arch["shapes"]``) resized."""
    model = create_model(arch["model"], tuple(arch["in_shape"]), arch["num_classes"], **arch.get("kwargs", {}))
    return apply_shapes(model, arch.get("shapes") or {})


# Importing the families registers them: every module of this package is imported, so adding a
# family is adding its file (and its test), nothing else.
for _mod in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_mod.name}")

__all__ = ["InShape", "ModelEntry", "ModelSourceError", "ModelUnavailable", "apply_shapes", "changed_shapes",
           "create_model", "list_models", "model_entry", "model_from_arch", "register_model", "resolve"]
