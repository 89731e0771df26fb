"""Rebuilding a structurally pruned copy of *any* model: the sizes of the layers that pruning
shrank are recorded in the arch (``arch["shapes"]``: module name -> sizes), and
:func:`model_from_arch` builds the model as usual, then replaces each of those layers by a fresh
one of the recorded sizes, every other hyper-parameter kept. Models whose definition declares a
width reader (``@register_model(widths=...)``) are rebuilt from their constructor's arguments
instead; this serves all others (user callables, torchvision, timm, ResNets)."""
from __future__ import annotations

from torch import nn

RESHAPABLE = (nn.Conv1d, nn.Conv2d, nn.Linear, nn.BatchNorm1d, nn.BatchNorm2d)


def layer_sizes(m: nn.Module) -> dict:
    """The sizes of one layer that structured pruning can change."""
    if isinstance(m, (nn.Conv1d, nn.Conv2d)):
        return {"in": m.in_channels, "out": m.out_channels, "groups": m.groups}
    if isinstance(m, nn.Linear):
        return {"in": m.in_features, "out": m.out_features}
    if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
        return {"features": m.num_features}
    raise TypeError(f"{type(m).__name__} is not a layer structured pruning resizes")


def changed_shapes(pruned: nn.Module, original: nn.Module) -> dict[str, dict]:
    """{module name: sizes} of every resizable layer of ``pruned`` whose sizes differ from the
    same layer of ``original`` (the model as its constructor builds it)."""
    before = dict(original.named_modules())
    return {name: layer_sizes(m) for name, m in pruned.named_modules()
            if isinstance(m, RESHAPABLE) and name in before and layer_sizes(m) != layer_sizes(before[name])}


def _resized(old: nn.Module, s: dict) -> nn.Module:
    bias = getattr(old, "bias", None) is not None
    if isinstance(old, (nn.Conv1d, nn.Conv2d)):
        return type(old)(s["in"], s["out"], old.kernel_size, old.stride, old.padding, old.dilation,
                         groups=s["groups"], bias=bias, padding_mode=old.padding_mode)
    if isinstance(old, nn.Linear):
        return nn.Linear(s["in"], s["out"], bias=bias)
    return type(old)(s["features"], eps=old.eps, momentum=old.momentum, affine=old.affine,
                     track_running_stats=old.track_running_stats)


def apply_shapes(model: nn.Module, shapes: dict[str, dict]) -> nn.Module:
    """``model`` with each named layer replaced by a fresh one of the recorded sizes."""
    for name, sizes in shapes.items():
        parent_name, _, attr = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, attr, _resized(getattr(parent, attr), sizes))
    return model
