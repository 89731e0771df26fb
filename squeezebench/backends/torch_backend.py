"""PyTorch eager on CPU and CUDA, loading a state_dict artifact (weights_only); and the exporter
of that artifact: the variant's module, or for int8 the module torch.ao converts it to."""
from __future__ import annotations

import copy
import json
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from squeezebench import torch_int8
from squeezebench.backends.base import (
    Artifact, Backend, BackendUnavailable, Exporter, Session, Writer, int8_facts, precision_of, register_backend,
    register_exporter,
)
from squeezebench.domain import Variant
from squeezebench.keys import produced_by
from squeezebench.machine import cpu_model_name

TORCH_CUDA_NO_INT8 = ("torch's int8 kernels (quantized engine x86/fbgemm/oneDNN) are CPU-only; "
                      "torch-cuda has no eager int8 path for this artifact")


def load_torch_model(artifact: Artifact) -> torch.nn.Module:
    from squeezebench.models import model_from_arch

    arch = json.loads((artifact.main.parent / "arch.json").read_text())
    model = model_from_arch(arch)
    with warnings.catch_warnings():
        if "quant" in arch:  # torch's own unpickling of quantized tensors uses the deprecated TypedStorage
            warnings.filterwarnings("ignore", message="TypedStorage is deprecated")
        state = torch.load(artifact.main, map_location="cpu", weights_only=True)
    if "quant" in arch:  # an int8 state_dict: rebuild the quantized structure it belongs to
        from squeezebench.torch_int8 import torch_int8_skeleton

        model = torch_int8_skeleton(model, arch["quant"], tuple(arch["in_shape"]))
        model.load_state_dict(state, strict=True)
        return model.eval()
    model.load_state_dict(state, strict=True)
    dtype = getattr(torch, arch.get("dtype", "float32"))
    return model.to(dtype).eval()


def artifact_in_shape(artifact: Artifact) -> tuple[int, ...] | None:
    """The (C, H, W) the artifact's model takes, from its arch.json (None when it does not say)."""
    try:
        return tuple(json.loads((artifact.main.parent / "arch.json").read_text())["in_shape"])
    except (OSError, KeyError, ValueError):
        return None


def _module_macs(m: torch.nn.Module, inp: torch.Tensor, out: torch.Tensor) -> int:
    """MACs of one call of a Linear/Conv module (float or quantized): output elements x weight
    elements per output channel; a transposed conv's weight is [in, out/groups, k...]: per input element."""
    w = m.weight() if callable(m.weight) else m.weight
    per = w.numel() // w.shape[0]
    return (inp.numel() if "Transpose" in type(m).__name__ else out.numel()) * per


class TorchSession(Session):
    def __init__(self, model: torch.nn.Module, device: torch.device, threads: int | None, device_name: str,
                 in_shape: tuple[int, ...] | None = None):
        self.model = model.to(device).eval()
        self.in_shape = in_shape
        self.device = device
        self.threads = threads
        self.device_name = device_name
        # A converted int8 module may have no float parameters at all: it takes float32 input.
        self.dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
        self._sync = torch.cuda.synchronize if device.type == "cuda" else None

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        return x.to(self.device, self.dtype).contiguous()

    def run(self, prepared: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            out = self.model(prepared)
        if self._sync is not None:
            self._sync()
        return out

    def to_numpy(self, out: torch.Tensor) -> np.ndarray:
        return out.float().cpu().numpy()

    def _compute_ops(self) -> list[dict]:
        """Every Linear/Conv module (torch.ao quantized or float) with its precision, the dtypes it
        saw and its MACs per image, from forward hooks on one zero image (MACs None without in_shape)."""
        with warnings.catch_warnings():  # torch.ao's deprecation notices
            warnings.simplefilter("ignore")
            from torch.ao.nn.quantized.modules.utils import WeightedQuantizedModule

        ops: dict[str, dict] = {}
        for name, m in self.model.named_modules():
            if isinstance(m, WeightedQuantizedModule):
                dynamic = ".dynamic." in type(m).__module__  # activations quantized per batch at run time
                w = m.weight()
                ops[name] = {"name": name, "op": type(m).__name__, "precision": "int8",
                             "summary": f"{type(m).__name__}:int8{'-dynamic' if dynamic else ''}",
                             "weight": str(w.dtype).replace("torch.", ""), "activation": None, "macs": None,
                             **({"dynamic": True} if dynamic else {})}
            elif isinstance(m, (torch.nn.Linear, torch.nn.modules.conv._ConvNd)):
                dtype = str(m.weight.dtype).replace("torch.", "")
                ops[name] = {"name": name, "op": type(m).__name__, "precision": precision_of(dtype),
                             "summary": f"{type(m).__name__}:{dtype}", "weight": dtype, "activation": None,
                             "macs": None}
        if self.in_shape is None or not ops:
            return list(ops.values())

        def hook(name):
            def record(m, args, out):
                ops[name]["activation"] = str(args[0].dtype).replace("torch.", "")
                ops[name]["macs"] = (ops[name]["macs"] or 0) + _module_macs(m, args[0], out)
            return record

        modules = dict(self.model.named_modules())
        handles = [modules[name].register_forward_hook(hook(name)) for name in ops]
        try:
            self.run(self.prepare(torch.zeros(1, *self.in_shape)))
        except Exception:  # facts must not fail a record: without MACs the share counts modules
            for op in ops.values():
                op.update(activation=None, macs=None)
            return list(ops.values())
        finally:
            for h in handles:
                h.remove()
        return [op for op in ops.values() if op["activation"] is not None]  # a module never called runs nothing

    def facts(self) -> dict:
        """Which compute modules run int8 kernels (torch.ao quantized modules) and which float, and
        how much of the model's MACs run int8."""
        from collections import Counter

        ops = self._compute_ops()
        compute = Counter(op.pop("summary") for op in ops)
        evidence = {"compute_modules": dict(sorted(compute.items())), "input_dtype": str(self.dtype).replace("torch.", "")}
        if any(op["precision"] == "int8" for op in ops):
            evidence["quantized_engine"] = torch.backends.quantized.engine
        return int8_facts(f"torch on {self.device.type}", self.requested_quantization, ops, evidence)


# Eager PyTorch has no 4-bit weight kernels for Linear (torchao's int4 paths need torch.compile
# or CUDA): running the dequantized reference would time an fp32 model under a 4-bit name.
TORCH_NO_WEIGHT_ONLY = ("PyTorch eager has no 4-bit weight-only Linear kernels: the variant's torch module holds "
                        "the dequantized float weights, so a record here would time fp32")


@register_backend
class TorchCPU(Backend):
    name = "torch-cpu"
    artifact_format = "torch"

    @classmethod
    def support_reason(cls, v: Variant) -> str | None:
        return TORCH_NO_WEIGHT_ONLY if v.export.weight_only is not None else None

    def load(self, artifact: Artifact) -> Session:
        # torch's intra-op pool is process-wide; the session pins it to the requested count.
        torch.set_num_threads(self.threads)
        session = TorchSession(load_torch_model(artifact), torch.device("cpu"), self.threads, cpu_model_name(),
                               artifact_in_shape(artifact))
        session.requested_quantization = artifact.meta.get("quantization")
        return session


@register_backend
class TorchCUDA(Backend):
    name = "torch-cuda"
    artifact_format = "torch"

    @classmethod
    def unavailable_reason(cls) -> str | None:
        if not torch.cuda.is_available():
            build = torch.version.cuda or "none (CPU-only build)"
            return f"no CUDA device: torch {torch.__version__} (CUDA {build}) sees no GPU"
        return None

    @classmethod
    def support_reason(cls, v: Variant) -> str | None:
        if v.export.weight_only is not None:
            return TORCH_NO_WEIGHT_ONLY
        return TORCH_CUDA_NO_INT8 if v.export.quantization is not None else None

    def load(self, artifact: Artifact) -> Session:
        reason = self.unavailable_reason()
        if reason:
            raise BackendUnavailable(reason)
        dev = torch.device("cuda")
        session = TorchSession(load_torch_model(artifact), dev, None, torch.cuda.get_device_name(dev),
                               artifact_in_shape(artifact))
        session.requested_quantization = artifact.meta.get("quantization")
        return session


# -- the exporter ------------------------------------------------------------------------------
def write_torch(model: nn.Module, arch: dict, out: Path) -> str:
    """state_dict (loaded with weights_only=True) plus arch.json to rebuild the module."""
    torch.save({k: v.detach().clone() for k, v in model.state_dict().items()}, out / "model.pt")
    (out / "arch.json").write_text(json.dumps(arch, sort_keys=True))
    return "model.pt"


def int8_module(v: Variant) -> nn.Module:
    """torch.ao's int8 module for ``v``'s quantization: FX ``prepare_fx``/calibrate/``convert_fx``
    (static, x86 engine: fbgemm/oneDNN int8 kernels), ``quantize_dynamic`` on ``nn.Linear`` (Conv
    stays float), or ``convert_fx`` of the fine-tuned fake-quant model (QAT)."""
    q = v.export.quantization
    float_model = v.export.float_model if v.export.float_model is not None else v.model
    with torch_int8._quiet():
        from torch.ao.quantization import quantize_dynamic
        from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

        if q.method == "static":
            prepared = prepare_fx(copy.deepcopy(float_model), torch_int8.torch_qconfig_mapping("static", q.per_channel),
                                  (torch.zeros(1, *v.in_shape),))
            with torch.no_grad():
                for b in q.calibration.split(128):
                    prepared(b)
            return convert_fx(prepared).eval()
        if q.method == "dynamic":
            return quantize_dynamic(copy.deepcopy(float_model), {nn.Linear: torch_int8._dynamic_qconfig(q.per_channel)},
                                    dtype=torch.qint8)
        if q.method == "qat":
            return convert_fx(copy.deepcopy(q.qat_model)).eval()
    raise ValueError(f"no torch int8 conversion for method {q.method!r}")


@produced_by("torch")
def _write_module(v: Variant, out: Path) -> str:
    return write_torch(v.model, v.arch, out)


@produced_by("torch")
def _write_int8(v: Variant, out: Path) -> str:
    """The converted module's state_dict (int8 weight tensors, packed params; loadable with
    ``weights_only=True``) and arch.json whose ``quant`` entry rebuilds the structure
    (:func:`squeezebench.torch_int8.torch_int8_skeleton`)."""
    q = v.export.quantization
    quant = {"method": q.method, "per_channel": q.per_channel, "engine": torch.backends.quantized.engine}
    torch.save(int8_module(v).state_dict(), out / "model.pt")
    (out / "arch.json").write_text(json.dumps({**v.arch, "quant": quant}, sort_keys=True))
    return "model.pt"


_INT8_TOOLS = {
    "static": "torch.ao.quantization FX prepare_fx/convert_fx (HistogramObserver 8-bit activations, 7-bit weights)",
    "dynamic": "torch.ao.quantization.quantize_dynamic on nn.Linear (Conv stays float)",
    "qat": "torch.ao.quantization FX prepare_qat_fx (FakeQuantize) + training.fit, convert_fx",
}


@register_exporter
class TorchExporter(Exporter):
    """``model.pt`` + ``arch.json``: the variant's module; for int8, torch.ao's converted module
    (torch's quantized kernels are CPU-only, so torch-cuda skips int8)."""

    format = "torch"

    def writer(self, v: Variant) -> Writer:
        return _write_int8 if v.export.quantization is not None else _write_module

    def code(self) -> tuple:
        return (type(self), torch_int8)

    def files(self, entry: Path, main: str) -> tuple[Path, ...]:
        return (entry / main, entry / "arch.json")

    def tool(self, v: Variant) -> str | None:
        q = v.export.quantization
        return _INT8_TOOLS[q.method] if q is not None else None
