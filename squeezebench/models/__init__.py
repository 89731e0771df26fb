"""Model definitions and the registry. One file per model family.

``create_model`` and ``model_entry`` take a registry name or any other model spec
(``package.module:callable``, ``torchvision:<name>``, ``timm:<name>``: see
:mod:`squeezebench.models.sources`)."""
from squeezebench.models._registry import InShape, ModelEntry, list_models, register_model
from squeezebench.models.sources import (
    ModelSourceError, ModelUnavailable, create_model, model_entry, resolve,
)

# Importing the families registers them.
from squeezebench.models import lenet, mlp, resnet  # noqa: E402,F401

__all__ = ["InShape", "ModelEntry", "ModelSourceError", "ModelUnavailable", "create_model", "list_models",
           "model_entry", "register_model", "resolve"]
