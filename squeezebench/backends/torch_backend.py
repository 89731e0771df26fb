"""PyTorch eager on CPU and CUDA, loading a state_dict artifact (weights_only)."""
from __future__ import annotations

import json
import warnings

import numpy as np
import torch

from squeezebench.backends.base import Artifact, Backend, BackendUnavailable, Session, int8_facts, register_backend
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


class TorchSession(Session):
    def __init__(self, model: torch.nn.Module, device: torch.device, threads: int | None, device_name: str):
        self.model = model.to(device).eval()
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

    def facts(self) -> dict:
        """Which compute modules run int8 kernels (torch.ao quantized modules) and which float."""
        from collections import Counter

        with warnings.catch_warnings():  # torch.ao's deprecation notices
            warnings.simplefilter("ignore")
            from torch.ao.nn.quantized.modules.utils import WeightedQuantizedModule

        compute: Counter = Counter()
        int8 = False
        for m in self.model.modules():
            if isinstance(m, WeightedQuantizedModule):
                int8 = True
                dynamic = ".dynamic." in type(m).__module__  # activations quantized per batch at run time
                compute[f"{type(m).__name__}:int8{'-dynamic' if dynamic else ''}"] += 1
            elif isinstance(m, (torch.nn.Linear, torch.nn.modules.conv._ConvNd)):
                compute[f"{type(m).__name__}:{str(m.weight.dtype).replace('torch.', '')}"] += 1
        evidence = {"compute_modules": dict(sorted(compute.items())), "input_dtype": str(self.dtype).replace("torch.", "")}
        if int8:
            evidence["quantized_engine"] = torch.backends.quantized.engine
        return int8_facts(f"torch on {self.device.type}", self.requested_quantization, int8, evidence)


@register_backend
class TorchCPU(Backend):
    name = "torch-cpu"
    artifact_format = "torch"

    def load(self, artifact: Artifact) -> Session:
        # torch's intra-op pool is process-wide; the session pins it to the requested count.
        torch.set_num_threads(self.threads)
        session = TorchSession(load_torch_model(artifact), torch.device("cpu"), self.threads, cpu_model_name())
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
        session = TorchSession(load_torch_model(artifact), dev, None, torch.cuda.get_device_name(dev))
        session.requested_quantization = artifact.meta.get("quantization")
        return session
