"""Small MLP student for knowledge distillation (the study's one hidden layer of 50 units)."""
from __future__ import annotations

from torch import nn

from squeezebench.models._registry import InShape, register_model, sgd_one_cycle


@register_model(recipes={"mnist": sgd_one_cycle(0.1, 4), "cifar10": sgd_one_cycle(0.02, 2)},
                widths=lambda m: {"hidden": m[1].out_features})
def mlp_student(in_shape: InShape, num_classes: int, hidden: int = 50) -> nn.Module:
    """MLP student: input-50-classes, one hidden ReLU layer."""
    c, h, w = in_shape
    return nn.Sequential(
        nn.Flatten(), nn.Linear(c * h * w, hidden), nn.ReLU(), nn.Linear(hidden, num_classes)
    )
