"""OpenVINO on CPU, loading an IR (.xml + .bin); one compiled model per batch shape."""
from __future__ import annotations

import importlib.util
from collections import Counter

import numpy as np
import torch

from squeezebench.backends.base import Artifact, Backend, BackendUnavailable, Session, int8_facts, register_backend

# Executed layer types that multiply-accumulate; int8 when their activation input is u8/i8
# (a weight-compressed layer shows runtimePrecision i8 but takes f32 activations into an f32 kernel).
COMPUTE_LAYERS = frozenset({"Convolution", "GroupConvolution", "Deconvolution", "FullyConnected", "MatMul", "Gemm"})


def _type_name(t) -> str:
    return t.get_type_name() if hasattr(t, "get_type_name") else str(t)


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
        dtype = self.model.inputs[0].get_element_type().to_dtype()  # f32 unless the IR says otherwise
        arr = np.ascontiguousarray(x.numpy().astype(dtype, copy=False))
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
        compute: Counter = Counter()
        int8 = False
        for op in compiled.get_runtime_model().get_ordered_ops():
            info = op.get_rt_info()
            if "runtimePrecision" in info and "layerType" in info:
                layer = info["layerType"].astype(str)
                prec[f"{layer}:{info['runtimePrecision'].astype(str)}"] += 1
                if layer in COMPUTE_LAYERS and op.get_input_size():
                    act = op.input(0).get_element_type().get_type_name()
                    kernel = info["primitiveType"].astype(str) if "primitiveType" in info else "?"
                    compute[f"{layer}:{act}:{kernel}"] += 1
                    int8 = int8 or act in ("u8", "i8")
        evidence = {"runtime_precisions": dict(sorted(prec.items())),
                    "compute_layers": dict(sorted(compute.items())),  # layer:activation type:kernel
                    "inference_precision_hint": self.precision_hint,
                    # What the plugin settled on: a CPU without native f16/bf16 runs f32.
                    "inference_precision_effective": _type_name(compiled.get_property("INFERENCE_PRECISION_HINT"))}
        return int8_facts("openvino", self.requested_quantization, int8, evidence)


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
        caps = core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")
        if hint == "bf16" and "BF16" not in caps:
            # The bf16 IR holds f32 weights; without BF16 the plugin would run plain f32.
            raise BackendUnavailable(f"this CPU has no bf16 support in OpenVINO (OPTIMIZATION_CAPABILITIES: "
                                     f"{', '.join(caps)}): a bf16 record would be an f32 run")
        session = OpenVINOSession(core, model, self.threads, hint)
        session.requested_quantization = artifact.meta.get("quantization")
        return session
