"""LeNet-300-100 and LeNet-5 (LeCun et al.), as used in the study.

Layer widths are arguments so that a structurally pruned copy (fewer filters or
neurons) is the same family with smaller numbers and can be rebuilt from them.
"""
from __future__ import annotations

import torch
from torch import nn

from squeezebench.models._registry import InShape, register_model, sgd_one_cycle


class LeNet300100(nn.Module):
    def __init__(self, in_features: int, num_classes: int, h1: int = 300, h2: int = 100):
        super().__init__()
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(in_features, h1)
        self.fc2 = nn.Linear(h1, h2)
        self.fc3 = nn.Linear(h2, num_classes)
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.flatten(x)
        x = self.relu(self.fc1(x))
        x = self.relu(self.fc2(x))
        return self.fc3(x)


class LeNet5(nn.Module):
    def __init__(
        self, in_shape: InShape, num_classes: int,
        c1: int = 6, c2: int = 16, f1: int = 120, f2: int = 84,
    ):
        super().__init__()
        c, h, w = in_shape
        # Two valid 5x5 convolutions, each followed by 2x2 max-pooling.
        oh, ow = ((h - 4) // 2 - 4) // 2, ((w - 4) // 2 - 4) // 2
        if oh < 1 or ow < 1:
            raise ValueError(f"lenet5 needs inputs of at least 16x16, got {h}x{w}")
        self.conv1 = nn.Conv2d(c, c1, 5)
        self.conv2 = nn.Conv2d(c1, c2, 5)
        self.pool = nn.MaxPool2d(2)
        self.relu = nn.ReLU()
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(c2 * oh * ow, f1)
        self.fc2 = nn.Linear(f1, f2)
        self.fc3 = nn.Linear(f2, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.relu(self.conv1(x)))
        x = self.pool(self.relu(self.conv2(x)))
        x = self.flatten(x)
        x = self.relu(self.fc1(x))
        x = self.relu(self.fc2(x))
        return self.fc3(x)


@register_model(
    recipes={"mnist": sgd_one_cycle(0.1, 5), "cifar10": sgd_one_cycle(0.02, 3)},
    floors={"mnist": 98.0, "cifar10": 50.0},
    widths=lambda m: {"h1": m.fc1.out_features, "h2": m.fc2.out_features},
)
def lenet300_100(in_shape: InShape, num_classes: int, h1: int = 300, h2: int = 100) -> nn.Module:
    """LeNet-300-100: a 784-300-100-10 MLP (for MNIST; any input is flattened)."""
    c, h, w = in_shape
    return LeNet300100(c * h * w, num_classes, h1=h1, h2=h2)


@register_model(
    recipes={"mnist": sgd_one_cycle(0.1, 5, label_smoothing=0.1), "cifar10": sgd_one_cycle(0.05, 5)},
    floors={"mnist": 98.9, "cifar10": 60.0},
    widths=lambda m: {"c1": m.conv1.out_channels, "c2": m.conv2.out_channels,
                      "f1": m.fc1.out_features, "f2": m.fc2.out_features},
)
def lenet5(
    in_shape: InShape, num_classes: int, c1: int = 6, c2: int = 16, f1: int = 120, f2: int = 84
) -> nn.Module:
    """LeNet-5: conv6-conv16-fc120-fc84-fc10 with valid convolutions (1x28x28, 3x32x32, ...)."""
    return LeNet5(in_shape, num_classes, c1=c1, c2=c2, f1=f1, f2=f2)
