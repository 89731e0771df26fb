"""Training recipes and top-1 floors, resolved per (model, dataset): the user's
``[tool.squeezebench]`` first (its recipe fields over the rest), then what the model's
definition declares (``@register_model(recipes=..., floors=...)``), then a generic default
computed from nothing but the model: Adam, one-cycle, 10 epochs, and no floor. The engine names
no model or dataset."""
from __future__ import annotations

from dataclasses import replace

from squeezebench.config import Config
from squeezebench.models import model_entry
from squeezebench.training import TrainConfig

GENERIC = TrainConfig(epochs=10, lr=1e-3, batch_size=128, optimizer="adam", schedule="onecycle")


def _entry(model: str):
    try:
        return model_entry(model)
    except (KeyError, ValueError, ImportError):  # an unresolvable spec is reported at startup
        return None


def recipe_for(model: str, dataset: str, config: Config | None = None) -> TrainConfig:
    """The user's config recipe (its fields over the model's own), else the model's recipe for
    the dataset, else the generic one."""
    entry = _entry(model)
    own = entry.recipes.get(dataset) if entry is not None else None
    base = TrainConfig(**own) if own else GENERIC
    override = config.fact("recipe", model, dataset) if config else None
    return replace(base, **override) if override else base


def floor_for(model: str, dataset: str, config: Config | None = None) -> float:
    """The top-1 floor in percent: the user's config, else the model's own for the dataset, else
    0 (no guardrail) for untuned pairs such as user image folders."""
    f = config.fact("floor", model, dataset) if config else None
    if f is not None:
        return float(f)
    entry = _entry(model)
    return float(entry.floors.get(dataset, 0.0)) if entry is not None else 0.0
