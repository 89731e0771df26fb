"""This repo's entry point to the model registry, which ships in the package
(``squeezebench.models``: one file per family, ``@register_model``, ``create_model``). Users'
projects import ``squeezebench.models``; this package name is left free for theirs."""
from squeezebench.models import InShape, ModelEntry, create_model, list_models, model_entry, register_model

__all__ = ["InShape", "ModelEntry", "create_model", "list_models", "model_entry", "register_model"]
