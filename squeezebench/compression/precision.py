"""Floating-point precision: fp64, fp32, fp16, bf16 (Table 1)."""
from __future__ import annotations

import copy
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from squeezebench import artifacts as art
from squeezebench.keys import produced_by
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


# Why a backend cannot run a precision (the bench fixture skips it with this reason).
ORT_NO_FP64_CONV = ("onnxruntime's CPU execution provider has no float64 Conv kernel "
                    "(NOT_IMPLEMENTED); fp64 runs there only for models without convolutions")
ORT_NO_BF16 = ("onnxruntime's CPU execution provider has no bfloat16 kernels (and ONNX Conv does not "
               "admit bfloat16)")
OPENVINO_NO_FP64 = ("OpenVINO's CPU plugin computes in f32 at most: an f64 model is converted to f32, "
                    "so it would not run in fp64")


def _openvino_writer(float_model: nn.Module, in_shape: tuple[int, ...], compress_to_fp16: bool):
    """IR from the fp32 ONNX of ``float_model``: f32 inputs and outputs, weights in f16 when asked
    (OpenVINO's own fp16 storage); the compute precision is the session's inference hint."""

    @produced_by("torch", "onnx", "openvino")
    def write(out: Path) -> str:
        import openvino as ov

        with tempfile.TemporaryDirectory() as work:
            art.write_onnx(float_model, in_shape, Path(work))
            model = ov.convert_model(str(Path(work) / "model.onnx"))
        ov.save_model(model, str(out / "model.xml"), compress_to_fp16=compress_to_fp16)
        return "model.xml"

    return write


@register_handler(PrecisionConfig)
def apply_precision(cfg: PrecisionConfig, state: ChainState) -> ChainState:
    """Cast the model. Per backend:

    * torch: the module in that dtype (CPU and CUDA run fp64, fp16 and bf16).
    * ONNX Runtime: the ONNX exported in that dtype. The CPU EP runs fp64 Gemm/MatMul but has no
      fp64 Conv (skipped for conv nets), and no bf16 (skipped). An fp16 model runs: ORT inserts
      Casts and computes in f32, which the record's ``runtime.compute_precisions`` shows.
    * OpenVINO: an IR with f32 interface; fp16 stores f16 weights (``compress_to_fp16``), and the
      session passes ``INFERENCE_PRECISION_HINT`` (f16, bf16); the record's
      ``runtime.inference_precision_effective`` says what the CPU plugin settled on (f32 on CPUs
      without native f16). fp64 is skipped (the plugin computes f32 at most); bf16 is skipped at
      load on CPUs without BF16 (its IR holds f32 weights, so the run would be plain f32).
    """
    torch_dtype = getattr(torch, _DTYPES[cfg.dtype])
    float_model = copy.deepcopy(state.model).float().eval()
    in_shape = tuple(state.arch["in_shape"])
    has_conv = any(isinstance(m, nn.modules.conv._ConvNd) for m in state.model.modules())
    state.model = state.model.to(torch_dtype)
    state.arch = {**state.arch, "dtype": _DTYPES[cfg.dtype]}
    unsupported: dict[str, str] = {}
    if cfg.dtype == "fp64":
        unsupported["openvino"] = OPENVINO_NO_FP64
        if has_conv:
            unsupported["onnxruntime"] = ORT_NO_FP64_CONV
        state.formats = ("torch",) if has_conv else ("torch", "onnx")
    elif cfg.dtype == "fp16":
        state.writers["openvino"] = _openvino_writer(float_model, in_shape, compress_to_fp16=True)
    elif cfg.dtype == "bf16":
        unsupported["onnxruntime"] = ORT_NO_BF16
        state.formats = ("torch", "openvino")
        state.writers["openvino"] = _openvino_writer(float_model, in_shape, compress_to_fp16=False)
    state.artifact_meta = {**state.artifact_meta,
                           "inference_precision": {"fp64": "f32", "fp32": "f32", "fp16": "f16",
                                                   "bf16": "bf16"}[cfg.dtype]}
    if unsupported:
        state.facts["unsupported_backends"] = {**state.facts.get("unsupported_backends", {}), **unsupported}
    state.facts["precision"] = cfg.dtype
    state.facts["bits_per_weight"] = torch.finfo(torch_dtype).bits
    return state
