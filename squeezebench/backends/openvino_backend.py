"""OpenVINO on CPU, loading an IR (.xml + .bin); one compiled model per batch shape."""
from __future__ import annotations

import importlib.util
from collections import Counter

import numpy as np
import torch

from squeezebench.backends.base import Artifact, Backend, BackendUnavailable, Session, register_backend


class OpenVINOSession(Session):
    def __init__(self, core, model, threads: int, precision_hint: str):
        self.core = core
        self.model = model
        self.threads = threads
        self.precision_hint = precision_hint
        self.device_name = core.get_property("CPU", "FULL_DEVICE_NAME")
        self._compiled: dict[tuple, object] = {}

    def _request(self, shape: tuple):
        if shape not in self._compiled:
            m = self.model.clone()
            m.reshape({m.inputs[0].any_name: list(shape)})
            cfg = {
                "INFERENCE_NUM_THREADS": self.threads,
                "PERFORMANCE_HINT": "LATENCY",
                # Without this OpenVINO may silently run bf16/f16 on CPUs that have it.
                "INFERENCE_PRECISION_HINT": self.precision_hint,
            }
            compiled = self.core.compile_model(m, "CPU", cfg)
            self._compiled[shape] = (compiled, compiled.create_infer_request())
        return self._compiled[shape][1]

    def prepare(self, x: torch.Tensor):
        arr = np.ascontiguousarray(x.numpy().astype(np.float32, copy=False))
        return self._request(arr.shape), arr

    def run(self, prepared) -> np.ndarray:
        req, arr = prepared
        req.infer({0: arr}, share_inputs=True)
        return req.get_output_tensor(0).data

    def to_numpy(self, out: np.ndarray) -> np.ndarray:
        return np.array(out, dtype=np.float32)

    def facts(self) -> dict:
        """Runtime precision per executed layer type, read from the compiled graph."""
        if not self._compiled:
            return {}
        compiled = next(iter(self._compiled.values()))[0]
        prec: Counter = Counter()
        for op in compiled.get_runtime_model().get_ordered_ops():
            info = op.get_rt_info()
            if "runtimePrecision" in info and "layerType" in info:
                prec[f"{info['layerType'].astype(str)}:{info['runtimePrecision'].astype(str)}"] += 1
        return {"runtime_precisions": dict(sorted(prec.items())),
                "inference_precision_hint": self.precision_hint}


@register_backend
class OpenVINOCPU(Backend):
    name = "openvino"
    artifact_format = "openvino"

    @classmethod
    def unavailable_reason(cls) -> str | None:
        if importlib.util.find_spec("openvino") is None:
            return "openvino is not installed (pip install openvino)"
        return None

    def load(self, artifact: Artifact) -> Session:
        reason = self.unavailable_reason()
        if reason:
            raise BackendUnavailable(reason)
        import openvino as ov

        core = ov.Core()
        model = core.read_model(str(artifact.main))
        hint = artifact.meta.get("inference_precision", "f32")
        return OpenVINOSession(core, model, self.threads, hint)
