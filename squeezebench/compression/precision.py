"""Floating-point precision: fp64, fp32, fp16, bf16 (Table 1)."""
from __future__ import annotations

import copy
from dataclasses import dataclass

import torch

from squeezebench.compression.base import ChainState, CompressionConfig, ConfigError, register_handler
from squeezebench.domain import ExportSpec

_DTYPES = {"fp64": "float64", "fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}


@dataclass(frozen=True)
class PrecisionConfig(CompressionConfig):
    """Cast weights and activations to ``dtype`` (fp64, fp32, fp16, bf16)."""

    kind = "precision"
    dtype: str = "fp16"

    def __post_init__(self) -> None:
        if self.dtype not in _DTYPES:
            raise ConfigError(f"precision must be one of {', '.join(_DTYPES)}, got {self.dtype!r}; "
                              "for int8 use QuantizeConfig")

    def token(self) -> str:
        return self.dtype

    @classmethod
    def parse(cls, token: str):
        return cls(dtype=token) if token in ("fp64", "fp16", "bf16") else None

    def default_allowed_drop(self) -> float:
        return 0.5


@register_handler(PrecisionConfig)
def apply_precision(cfg: PrecisionConfig, state: ChainState) -> ChainState:
    """Cast the model (torch runs fp64, fp16 and bf16 on CPU and CUDA) and say so in the export
    spec: its dtype, and the fp32 model before the cast, for runtimes that store a precision their
    own way (e.g. f16 weights in an IR whose compute precision is a session hint). Which runtimes
    cannot run a precision is theirs to say (``Backend.support_reason``)."""
    torch_dtype = getattr(torch, _DTYPES[cfg.dtype])
    float_model = copy.deepcopy(state.model).float().eval()
    state.model = state.model.to(torch_dtype)
    state.arch = {**state.arch, "dtype": _DTYPES[cfg.dtype]}
    state.export = ExportSpec(dtype=_DTYPES[cfg.dtype], float_model=float_model)
    state.facts["precision"] = cfg.dtype
    state.facts["bits_per_weight"] = torch.finfo(torch_dtype).bits
    return state
