"""4-bit weight-only quantization (issue 13): every Linear weight stored on 4 bits, symmetric,
one scale per ``group_size`` consecutive inputs of each output neuron; activations and
convolutions stay float.

The step declares what the variant is (a runtime-free :class:`~squeezebench.domain.WeightOnlySpec`
on its export spec, and the fp32 model in ``float_model``); each runtime that runs such weights
quantizes the fp32 model with its own maintained tool when its exporter writes the artifact:
ONNX Runtime's ``MatMulNBitsQuantizer`` (``MatMulNBits`` kernels) and NNCF's ``compress_weights``
for OpenVINO. A runtime without 4-bit weight kernels (PyTorch eager on CPU) skips with the reason.

The variant's torch module (the parity reference) has each Linear weight replaced by its
round-to-nearest 4-bit value times its group's signed scale (the group's largest magnitude maps to
-8, codes clamped to [-8, 7], as ONNX Runtime's MLAS and NNCF's INT4_SYM do); ties and float
details may still round differently, so parity is held to ``PARITY_MIN``. The compact encoding stores the 4-bit codes (as ``qweights``) with their
group scales.

Token grammar: ``woq4[-g<group size>]``, e.g. ``woq4`` (groups of 32), ``woq4-g128``. Default
allowed top-1 drop: 1.0 pp.
"""
from __future__ import annotations

import copy
import re
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from squeezebench.compression.base import ChainState, CompressionConfig, ConfigError, register_handler
from squeezebench.compression.quantize import fp32_start
from squeezebench.domain import ExportSpec, WeightOnlySpec

_TOKEN = re.compile(r"^woq(?P<bits>\d+)(?:-g(?P<g>\d+))?$")
DEFAULT_GROUP = 32
BITS = 4
# Share of top-1 predictions a runtime must share with the reference (see the module docstring):
# the runtimes round ties and the largest magnitude of a group their own way.
PARITY_MIN = 0.97


@dataclass(frozen=True)
class WeightOnlyConfig(CompressionConfig):
    """4-bit weights for every Linear layer, ``group_size`` inputs per scale (a power of two >= 16)."""

    kind = "quantize"  # a terminal number-format step, like int8 (one per chain, last)
    bits: int = BITS
    group_size: int = DEFAULT_GROUP

    def __post_init__(self) -> None:
        if self.bits != BITS:
            raise ConfigError(f"weight-only quantization is 4-bit here, got bits={self.bits!r}; use woq4 "
                              "(8-bit weights: int8-dynamic)")
        g = self.group_size
        if isinstance(g, bool) or not isinstance(g, int) or g < 16 or g & (g - 1):
            raise ConfigError(f"group_size must be a power of two >= 16 (the runtimes' block sizes), got {g!r}; "
                              "e.g. woq4-g32")

    def token(self) -> str:
        return f"woq{self.bits}" + (f"-g{self.group_size}" if self.group_size != DEFAULT_GROUP else "")

    @classmethod
    def parse(cls, token: str):
        m = _TOKEN.match(token)
        if not m:
            if token.startswith("woq"):
                raise ConfigError(f"bad weight-only token {token!r}; the grammar is woq4[-g<group size>], e.g. woq4-g32")
            return None
        return cls(bits=int(m["bits"]), group_size=int(m["g"]) if m["g"] else DEFAULT_GROUP)

    def needs_torch_module(self) -> str | None:
        return "compute the 4-bit reference weights of its Linear layers"

    def default_allowed_drop(self) -> float:
        return 1.0


def quantize_groups(w: torch.Tensor, group_size: int, bits: int = BITS) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric round-to-nearest codes of a 2-D weight (out, in) in groups of ``group_size``
    inputs (the last group zero-padded): (int8 codes (out, in), float32 scales (out, groups))."""
    out_f, in_f = w.shape
    groups = -(-in_f // group_size)
    padded = torch.zeros(out_f, groups * group_size, dtype=torch.float32)
    padded[:, :in_f] = w.detach().float()
    g = padded.view(out_f, groups, group_size)
    lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    # A signed scale, as ONNX Runtime's MLAS and NNCF's INT4_SYM: the group's largest magnitude
    # maps to -8, so all 16 levels are used (|min| >= max: the minimum, else the maximum, flipped).
    wmin, wmax = g.amin(dim=2), g.amax(dim=2)
    scale = torch.where(wmin.abs() >= wmax, wmin.abs(), -wmax) / (1 << (bits - 1))
    scale = torch.where(scale != 0, scale, torch.ones_like(scale))  # an all-zero group: any scale, codes 0
    codes = torch.clamp(torch.round(g / scale[..., None]), lo, hi)
    return (codes.view(out_f, -1)[:, :in_f].to(torch.int8).numpy(), scale.numpy().astype(np.float32))


def dequantize_groups(codes: np.ndarray, scale: np.ndarray, group_size: int) -> np.ndarray:
    """Float weights from :func:`quantize_groups`'s codes and scales."""
    per_input = np.repeat(scale, group_size, axis=1)[:, :codes.shape[1]]
    return codes.astype(np.float32) * per_input


@register_handler(WeightOnlyConfig)
def apply_weight_only(cfg: WeightOnlyConfig, state: ChainState) -> ChainState:
    float_model = fp32_start(state, "weight-only quantization")
    reference = copy.deepcopy(float_model)
    qweights, n_linear = {}, 0
    with torch.no_grad():
        for name, mod in reference.named_modules():
            if not isinstance(mod, nn.Linear):
                continue
            codes, scale = quantize_groups(mod.weight, cfg.group_size)
            mod.weight.copy_(torch.from_numpy(dequantize_groups(codes, scale, cfg.group_size)))
            qweights[f"{name}.weight"] = {"values": codes, "scale": scale.reshape(-1),
                                          "zero_point": np.zeros(scale.size, np.int64), "axis": 0,
                                          "group_size": cfg.group_size}
            n_linear += 1
    if not n_linear:
        raise ConfigError(f"{state.model_name} has no Linear layer: 4-bit weight-only quantization (MatMul weights) "
                          "has nothing to quantize; use int8-static")
    state.export = ExportSpec(dtype="float32", float_model=float_model,
                              weight_only=WeightOnlySpec(bits=cfg.bits, group_size=cfg.group_size, label=cfg.token()))
    state.model = reference
    state.qweights = qweights
    state.facts["weight_only"] = {"bits": cfg.bits, "group_size": cfg.group_size, "symmetric": True,
                                  "layers": sorted(n.removesuffix(".weight") for n in qweights),
                                  "reference": "fp32 model with its Linear weights rounded to 4 bits per group"}
    state.facts["parity_min"] = PARITY_MIN
    return state
