"""ONNX Runtime, CPU execution provider, loading an exported .onnx file."""
from __future__ import annotations

import importlib.util
from collections import Counter

import numpy as np
import torch

from squeezebench.backends.base import Artifact, Backend, BackendUnavailable, Session, register_backend
from squeezebench.machine import cpu_model_name


class OrtSession(Session):
    def __init__(self, sess, threads: int, optimized_path: str | None):
        self.sess = sess
        self.threads = threads
        self.device_name = f"{cpu_model_name()} (CPUExecutionProvider)"
        self.input_name = sess.get_inputs()[0].name
        self.output_names = [sess.get_outputs()[0].name]
        self._optimized_path = optimized_path
        self._dtype = np.float16 if "float16" in sess.get_inputs()[0].type else np.float32
        if "double" in sess.get_inputs()[0].type:
            self._dtype = np.float64

    def prepare(self, x: torch.Tensor) -> dict:
        return {self.input_name: np.ascontiguousarray(x.numpy().astype(self._dtype, copy=False))}

    def run(self, prepared: dict) -> np.ndarray:
        return self.sess.run(self.output_names, prepared)[0]

    def to_numpy(self, out: np.ndarray) -> np.ndarray:
        return np.asarray(out, dtype=np.float32)

    def facts(self) -> dict:
        """Op types of the graph ORT actually runs (after its optimisations)."""
        if not self._optimized_path:
            return {}
        import onnx

        g = onnx.load(self._optimized_path, load_external_data=False).graph
        return {"runtime_ops": dict(sorted(Counter(n.op_type for n in g.node).items()))}


@register_backend
class OnnxRuntimeCPU(Backend):
    name = "onnxruntime"
    artifact_format = "onnx"

    @classmethod
    def unavailable_reason(cls) -> str | None:
        if importlib.util.find_spec("onnxruntime") is None:
            return "onnxruntime is not installed (pip install onnxruntime)"
        return None

    def load(self, artifact: Artifact) -> Session:
        reason = self.unavailable_reason()
        if reason:
            raise BackendUnavailable(reason)
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads = self.threads
        so.inter_op_num_threads = 1
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.log_severity_level = 3
        # Keep the optimised graph beside the artifact so the ops that really run can be read.
        opt_path = str(artifact.main.with_suffix(".ort-optimized.onnx"))
        so.optimized_model_filepath = opt_path
        sess = ort.InferenceSession(str(artifact.main), sess_options=so, providers=["CPUExecutionProvider"])
        return OrtSession(sess, self.threads, opt_path)
