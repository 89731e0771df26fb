"""Model definitions and the registry. One file per model family."""
from models._registry import InShape, ModelEntry, create_model, list_models, model_entry, register_model

# Importing the families registers them.
from models import lenet, mlp, resnet  # noqa: E402,F401

__all__ = ["InShape", "ModelEntry", "create_model", "list_models", "model_entry", "register_model"]
