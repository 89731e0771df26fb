"""PyTorch eager on CPU and CUDA, loading a state_dict artifact (weights_only)."""
from __future__ import annotations

import json
import warnings

import numpy as np
import torch

from squeezebench.backends.base import (
    Artifact, Backend, BackendUnavailable, Session, int8_facts, precision_of, register_backend,
)
from squeezebench.machine import cpu_model_name


def load_torch_model(artifact: Artifact) -> torch.nn.Module:
    from models import create_model

    arch = json.loads((artifact.main.parent / "arch.json").read_text())
    model = create_model(arch["model"], tuple(arch["in_shape"]), arch["num_classes"], **arch.get("kwargs", {}))
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


@register_backend
class TorchCPU(Backend):
    name = "torch-cpu"
    artifact_format = "torch"

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

    def load(self, artifact: Artifact) -> Session:
        reason = self.unavailable_reason()
        if reason:
            raise BackendUnavailable(reason)
        dev = torch.device("cuda")
        session = TorchSession(load_torch_model(artifact), dev, None, torch.cuda.get_device_name(dev),
                               artifact_in_shape(artifact))
        session.requested_quantization = artifact.meta.get("quantization")
        return session
