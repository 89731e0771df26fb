"""Static facts about a model: parameters, nonzero parameters, multiply-accumulates."""
from __future__ import annotations

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_nonzero(model: nn.Module) -> int:
    """Nonzero entries of the weights the model actually uses (pruning masks applied)."""
    return sum(int(torch.count_nonzero(t)) for t in _effective_tensors(model))


def nonzero_per_layer(model: nn.Module) -> dict[str, dict[str, int]]:
    out = {}
    for name, mod in model.named_modules():
        w = getattr(mod, "weight", None)
        if isinstance(w, torch.Tensor) and isinstance(mod, (nn.Linear, nn.Conv2d)):
            b = getattr(mod, "bias", None)
            out[name] = {
                "weight": w.numel(), "weight_nonzero": int(torch.count_nonzero(w)),
                "bias": b.numel() if b is not None else 0,
                "shape": list(w.shape),
            }
    return out


def _effective_tensors(model: nn.Module):
    # torch.nn.utils.prune keeps weight_orig + weight_mask and exposes `weight` as an attribute.
    for mod in model.modules():
        for pname, p in mod.named_parameters(recurse=False):
            if pname.endswith("_orig"):
                yield getattr(mod, pname[: -len("_orig")])
            else:
                yield p


def count_macs(model: nn.Module, in_shape: tuple[int, ...]) -> int:
    """Multiply-accumulates of one forward pass of one image (dense count, as the kernels run it).

    Counted by torch's FlopCounterMode (matmul/conv FLOPs / 2)."""
    p = next(model.parameters())
    x = torch.zeros(1, *in_shape, dtype=p.dtype, device=p.device)
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model.eval()(x)
    return counter.get_total_flops() // 2
