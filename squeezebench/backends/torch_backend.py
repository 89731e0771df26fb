"""PyTorch eager on CPU and CUDA, loading a state_dict artifact (weights_only)."""
from __future__ import annotations

import json

import numpy as np
import torch

from squeezebench.backends.base import Artifact, Backend, BackendUnavailable, Session, register_backend
from squeezebench.machine import cpu_model_name


def load_torch_model(artifact: Artifact) -> torch.nn.Module:
    from models import create_model

    arch = json.loads((artifact.main.parent / "arch.json").read_text())
    model = create_model(arch["model"], tuple(arch["in_shape"]), arch["num_classes"], **arch.get("kwargs", {}))
    state = torch.load(artifact.main, map_location="cpu", weights_only=True)
    model.load_state_dict(state, strict=True)
    dtype = getattr(torch, arch.get("dtype", "float32"))
    return model.to(dtype).eval()


class TorchSession(Session):
    def __init__(self, model: torch.nn.Module, device: torch.device, threads: int | None, device_name: str):
        self.model = model.to(device).eval()
        self.device = device
        self.threads = threads
        self.device_name = device_name
        self.dtype = next(model.parameters()).dtype
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


@register_backend
class TorchCPU(Backend):
    name = "torch-cpu"
    artifact_format = "torch"

    def load(self, artifact: Artifact) -> Session:
        # torch's intra-op pool is process-wide; the session pins it to the requested count.
        torch.set_num_threads(self.threads)
        return TorchSession(load_torch_model(artifact), torch.device("cpu"), self.threads, cpu_model_name())


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
        return TorchSession(load_torch_model(artifact), dev, None, torch.cuda.get_device_name(dev))
