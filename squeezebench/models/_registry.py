"""Model registry in the style of timm: ``@register_model`` + ``create_model(name)``."""
from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from torch import nn

from squeezebench.keys import source_hash

InShape = tuple[int, int, int]  # (channels, height, width)


class ModelSourceError(ValueError):
    """A model spec that cannot be resolved or built; the message names the source and the fix."""


class ModelUnavailable(ModelSourceError):
    """The library a model spec needs is not installed: its benchmarks skip with this reason."""


@dataclass(frozen=True)
class ModelEntry:
    name: str
    fn: Callable[..., nn.Module]
    source_file: Path
    description: str
    full_profile_only: bool = False
    # What the model's code is, for cache keys; empty for registry models (their source file's
    # hash). Set by the other sources (squeezebench.models.sources): library version and name.
    fingerprint: str = ""
    source: str = "registry"  # registry | callable | torchvision | timm | onnx
    # The model's own facts, beside its definition (a user's [tool.squeezebench] overrides them):
    # training recipe per dataset (TrainConfig fields), top-1 floor per dataset, and how to read a
    # structurally pruned instance's widths back as constructor keyword arguments.
    recipes: dict = field(default_factory=dict)
    floors: dict = field(default_factory=dict)
    widths: Callable[[nn.Module], dict] | None = None

    @property
    def code_fingerprint(self) -> str:
        """Part of every cache key of what this model built: its code (or library and version)."""
        return self.fingerprint or source_hash(self.source_file)


_REGISTRY: dict[str, ModelEntry] = {}


def sgd_one_cycle(lr: float, epochs: int, **kw) -> dict:
    """Recipe fields for SGD + Nesterov + one-cycle: the fastest recipes we found to clear the
    registry models' floors on 2 cores (measured numbers in README)."""
    return {"epochs": epochs, "lr": lr, "batch_size": 128, "optimizer": "sgd", "momentum": 0.9, "nesterov": True,
            "weight_decay": 5e-4, "schedule": "onecycle", "pct_start": 0.25, **kw}
SPEC_FORMS = "package.module:callable, torchvision:<name>, timm:<name>, onnx:<path>"


def register_model(
    fn: Callable[..., nn.Module] | None = None, *, full_profile_only: bool = False,
    recipes: dict[str, dict] | None = None, floors: dict[str, float] | None = None,
    widths: Callable[[nn.Module], dict] | None = None,
):
    """Register a constructor ``fn(in_shape, num_classes, **kwargs) -> nn.Module``, with the
    model's facts: ``recipes`` (dataset -> TrainConfig fields), ``floors`` (dataset -> top-1 %),
    ``widths`` (pruned module -> constructor kwargs, for structured pruning)."""

    def deco(f: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        name = f.__name__
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is registered twice")
        _REGISTRY[name] = ModelEntry(
            name=name,
            fn=f,
            source_file=Path(inspect.getsourcefile(f) or ""),
            description=(inspect.getdoc(f) or "").splitlines()[0] if f.__doc__ else "",
            full_profile_only=full_profile_only,
            recipes=dict(recipes or {}), floors=dict(floors or {}), widths=widths,
        )
        return f

    return deco(fn) if fn is not None else deco


def list_models() -> list[str]:
    """Names of every registered model, sorted."""
    return sorted(_REGISTRY)


def model_entry(name: str) -> ModelEntry:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown model {name!r}; registered: {', '.join(list_models())}; or "
                       f"{SPEC_FORMS}") from None


def check_shape(in_shape, num_classes: int) -> tuple[InShape, int]:
    if len(in_shape) != 3 or min(in_shape) < 1:
        raise ValueError(f"in_shape must be (channels, height, width), got {in_shape!r}")
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2, got {num_classes}")
    return tuple(int(v) for v in in_shape), int(num_classes)  # type: ignore[return-value]


def create_model(name: str, in_shape: InShape, num_classes: int, **kwargs) -> nn.Module:
    """Build a registered model for inputs of ``in_shape`` (C, H, W) and ``num_classes`` outputs.
    (``squeezebench.models.create_model`` also takes the other sources' specs.)"""
    shape, n = check_shape(in_shape, num_classes)
    return model_entry(name).fn(shape, n, **kwargs)
