"""ONNX Runtime, CPU execution provider, loading an exported .onnx file."""
from __future__ import annotations

import importlib.util
from collections import Counter

import numpy as np
import torch

from squeezebench.backends.base import Artifact, Backend, BackendUnavailable, Session, int8_facts, register_backend
from squeezebench.machine import cpu_model_name

# Ops of ORT's optimized graph that compute on integer data (int8/uint8 in, int32 accumulate).
# QuantizeLinear/DequantizeLinear/DynamicQuantizeLinear only convert: alone they mean float compute.
INT8_COMPUTE_OPS = frozenset({
    "QLinearConv", "QLinearMatMul", "QGemm", "MatMulInteger", "ConvInteger", "DynamicQuantizeMatMul",
    "MatMulIntegerToFloat", "QAttention", "DynamicQuantizeLSTM", "QLinearAdd", "QLinearMul",
    "QLinearAveragePool", "QLinearGlobalAveragePool", "QLinearConcat", "QLinearLeakyRelu",
    "QLinearSigmoid", "QLinearSoftmax", "QLinearReduceMean", "QLinearWhere",
})
INT8_CONVERT_OPS = frozenset({"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear"})
# Which input of a compute op holds its weight (default 1: Conv, Gemm, MatMul, *Integer).
_WEIGHT_INPUT = {"QLinearConv": 3, "QGemm": 3, "QLinearMatMul": 3}
FLOAT_COMPUTE_OPS = frozenset({"Conv", "FusedConv", "NchwcConv", "Gemm", "FusedGemm", "MatMul", "FusedMatMul",
                               "ConvTranspose"})


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
        from onnx import helper

        g = onnx.load(self._optimized_path, load_external_data=False).graph
        ops = Counter(n.op_type for n in g.node)
        # Element type of each compute op's weight (an initializer): what the kernel computes in
        # (an fp16 model on an x86 CPU EP shows float32: ORT inserted Casts and upcast it).
        init_type = {t.name: helper.tensor_dtype_to_np_dtype(t.data_type).name for t in g.initializer}
        compute = Counter(
            f"{n.op_type}:{init_type.get(n.input[_WEIGHT_INPUT.get(n.op_type, 1)], 'activation')}" for n in g.node
            if (n.op_type in INT8_COMPUTE_OPS or n.op_type in FLOAT_COMPUTE_OPS)
            and len(n.input) > _WEIGHT_INPUT.get(n.op_type, 1))
        int8_ops = {op: c for op, c in sorted(ops.items()) if op in INT8_COMPUTE_OPS or op in INT8_CONVERT_OPS}
        evidence = {"runtime_ops": dict(sorted(ops.items())), "compute_precisions": dict(sorted(compute.items())),
                    "int8_ops": int8_ops, "input_type": self.sess.get_inputs()[0].type}
        return int8_facts("onnxruntime", self.requested_quantization,
                          any(op in INT8_COMPUTE_OPS for op in ops), evidence)


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
        try:
            sess = ort.InferenceSession(str(artifact.main), sess_options=so, providers=["CPUExecutionProvider"])
        except ort.capi.onnxruntime_pybind11_state.NotImplemented as e:  # no CPU kernel for an op/type
            raise BackendUnavailable(f"onnxruntime's CPU execution provider cannot run this artifact: {e}") from None
        session = OrtSession(sess, self.threads, opt_path)
        session.requested_quantization = artifact.meta.get("quantization")
        return session
