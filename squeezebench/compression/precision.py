"""Floating-point precision: fp64, fp32, fp16, bf16 (Table 1)."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from squeezebench.compression.base import ChainState, CompressionConfig, ConfigError, register_handler

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
    torch_dtype = getattr(torch, _DTYPES[cfg.dtype])
    state.model = state.model.to(torch_dtype)
    state.arch = {**state.arch, "dtype": _DTYPES[cfg.dtype]}
    # ONNX has no bf16 on ORT's CPU provider for these ops; OpenVINO picks its own precision
    # through the inference hint, so its artifact stays fp32 weights with an explicit hint.
    if cfg.dtype == "bf16":
        state.formats = ("torch", "openvino")
    state.artifact_meta = {**state.artifact_meta,
                           "inference_precision": {"fp64": "f32", "fp32": "f32", "fp16": "f16",
                                                   "bf16": "bf16"}[cfg.dtype]}
    state.facts["precision"] = cfg.dtype
    state.facts["bits_per_weight"] = torch.finfo(torch_dtype).bits
    return state
