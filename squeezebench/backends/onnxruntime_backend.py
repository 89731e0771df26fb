"""ONNX Runtime, CPU execution provider, loading an exported .onnx file."""
from __future__ import annotations

import importlib.util
import json
import os
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np
import torch

from squeezebench.backends.base import (
    Artifact, Backend, BackendUnavailable, Session, int8_facts, matmul_reduction, precision_of, register_backend,
)
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
# The multiply-accumulate ops among them: what the int8 share is a share of (QLinearAdd & co. are
# elementwise and carry no MACs). Ops that quantize their float input themselves are "dynamic".
INT8_MAC_OPS = frozenset({"QLinearConv", "QLinearMatMul", "QGemm", "MatMulInteger", "ConvInteger",
                          "DynamicQuantizeMatMul", "MatMulIntegerToFloat", "QAttention", "DynamicQuantizeLSTM"})
DYNAMIC_INT8_OPS = frozenset({"DynamicQuantizeMatMul", "QAttention", "DynamicQuantizeLSTM"})
_CONV_OPS = frozenset({"Conv", "FusedConv", "NchwcConv", "QLinearConv", "ConvInteger"})
_GEMM_OPS = frozenset({"Gemm", "FusedGemm", "QGemm"})
_MATMUL_OPS = frozenset({"MatMul", "FusedMatMul", "MatMulInteger", "DynamicQuantizeMatMul", "MatMulIntegerToFloat",
                         "QLinearMatMul"})


def _numel(shape) -> int:
    return int(np.prod(shape, dtype=np.int64)) if shape is not None else 0


def ort_op_macs(op: str, act_shape: list[int] | None, out_shape: list[int] | None,
                weight_shape: list[int] | None) -> int | None:
    """Multiply-accumulates one node executed, from its run-time shapes; None when they do not say.

    Convolutions: output elements x (input channels / groups x kernel size), read from the weight,
    so NHWC and blocked layouts need no axis rules (an NCHWc-blocked float conv counts the output
    channels it pads to: what it executes)."""
    if out_shape is None:
        return None
    if op in _CONV_OPS and weight_shape:
        return _numel(out_shape) * _numel(weight_shape) // weight_shape[0]
    if op == "ConvTranspose" and weight_shape and act_shape:
        return _numel(act_shape) * _numel(weight_shape) // weight_shape[0]
    if op in _GEMM_OPS and act_shape and len(out_shape) == 2:
        return _numel(act_shape) * out_shape[1]  # A is M x K (or K x M): M*K*N either way
    if op in _MATMUL_OPS and act_shape:
        return _numel(out_shape) * matmul_reduction(act_shape, out_shape)
    return None


def _profile_nodes(profile: list[dict]) -> dict[str, dict]:
    """Node name -> the args ORT's profiler recorded for its kernel (run-time input/output types, shapes)."""
    out = {}
    for e in profile:
        if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time"):
            out[e["name"][: -len("_kernel_time")]] = e.get("args", {})
    return out


def _first(type_shapes: list[dict] | None) -> tuple[str | None, list[int] | None]:
    if not type_shapes:
        return None, None
    ((t, shape),) = type_shapes[0].items()
    return t, list(shape)


def _session_options(ort, threads: int, workdir: str):
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    # The optimised graph (the ops that really run) goes to the session's private directory: the
    # artifact's cache entry is verified and shared, never written after it is published.
    so.optimized_model_filepath = os.path.join(workdir, "ort-optimized.onnx")
    return so


class OrtSession(Session):
    def __init__(self, sess, threads: int, model_path: Path, workdir: tempfile.TemporaryDirectory):
        self.sess = sess
        self.threads = threads
        self.device_name = f"{cpu_model_name()} (CPUExecutionProvider)"
        self.input_name = sess.get_inputs()[0].name
        self.output_names = [sess.get_outputs()[0].name]
        self.model_path = model_path
        # Owned by the session: removed when it is garbage collected (or at exit at the latest).
        self._workdir = workdir
        self._optimized_path = os.path.join(workdir.name, "ort-optimized.onnx")
        self._compute_ops: list[dict] | None = None
        self._macs_note: str | None = None
        self._dtype = np.float16 if "float16" in sess.get_inputs()[0].type else np.float32
        if "double" in sess.get_inputs()[0].type:
            self._dtype = np.float64

    def prepare(self, x: torch.Tensor) -> dict:
        return {self.input_name: np.ascontiguousarray(x.numpy().astype(self._dtype, copy=False))}

    def run(self, prepared: dict) -> np.ndarray:
        return self.sess.run(self.output_names, prepared)[0]

    def to_numpy(self, out: np.ndarray) -> np.ndarray:
        return np.asarray(out, dtype=np.float32)

    def _profile(self) -> tuple[dict[str, dict], int, str | None]:
        """Run one zero batch in a profiling twin of this session (same options, so the same
        optimised graph): the profiler records every node's run-time input/output types and
        shapes, which the saved graph lacks for ORT's contrib ops. Never on the timed session:
        profiling would slow every call. Returns (node args by name, batch, why not)."""
        import onnxruntime as ort

        inp = self.sess.get_inputs()[0]
        shape = [d if isinstance(d, int) and d > 0 else 1 for d in inp.shape]
        try:
            with tempfile.TemporaryDirectory(dir=self._workdir.name) as tmp:
                so = _session_options(ort, self.threads or 1, tmp)
                so.enable_profiling = True
                so.profile_file_prefix = os.path.join(tmp, "profile")
                twin = ort.InferenceSession(str(self.model_path), sess_options=so, providers=["CPUExecutionProvider"])
                twin.run(None, {inp.name: np.zeros(shape, self._dtype)})
                with open(twin.end_profiling()) as f:
                    return _profile_nodes(json.load(f)), shape[0], None
        except Exception as e:  # facts must not fail a record: the share falls back to op counts
            return {}, shape[0], f"ORT profiling failed ({type(e).__name__}: {e}): MACs not attributed"

    def _ops(self, g) -> tuple[list[dict], str | None]:
        """Every multiply-accumulate node of the optimised graph: its precision and MACs per image."""
        from onnx import helper

        inits = {t.name: t for t in g.initializer}
        nodes, batch, why = self._profile()
        ops = []
        for n in g.node:
            if n.op_type not in INT8_MAC_OPS and n.op_type not in FLOAT_COMPUTE_OPS:
                continue
            w_in = _WEIGHT_INPUT.get(n.op_type, 1)
            w = inits.get(n.input[w_in]) if len(n.input) > w_in else None
            args = nodes.get(n.name, {})
            act, act_shape = _first(args.get("input_type_shape"))
            _, out_shape = _first(args.get("output_type_shape"))
            w_shape = list(w.dims) if w is not None else None
            macs = ort_op_macs(n.op_type, act_shape, out_shape, w_shape)
            weight = helper.tensor_dtype_to_np_dtype(w.data_type).name if w is not None else None
            dynamic = n.op_type in DYNAMIC_INT8_OPS
            precision = "int8" if n.op_type in INT8_MAC_OPS else precision_of(act or weight) or "unknown"
            ops.append({"name": n.name, "op": n.op_type, "precision": precision, "activation": act,
                        "weight": weight, "macs": macs // batch if macs is not None else None,
                        **({"dynamic": True} if dynamic else {})})
        if why is None and any(op["macs"] is None for op in ops):
            why = "some compute ops have no run-time shapes: the share counts compute ops"
        if why is None and any(n.domain == "com.microsoft.nchwc" and n.op_type == "Conv" for n in g.node):
            why = ("MACs as executed: NCHWc-blocked float convolutions count the output channels they pad to "
                   "(the block size depends on the CPU)")
        return ops, why

    def facts(self) -> dict:
        """Op types of the graph ORT actually runs (after its optimisations), and how much of it is int8."""
        if not os.path.exists(self._optimized_path):
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
        if self._compute_ops is None:  # the graph does not change: profile once per session
            self._compute_ops, self._macs_note = self._ops(g)
        evidence = {"runtime_ops": dict(sorted(ops.items())), "compute_precisions": dict(sorted(compute.items())),
                    "int8_ops": int8_ops, "input_type": self.sess.get_inputs()[0].type}
        if self._macs_note:
            evidence["macs_note"] = self._macs_note
        return int8_facts("onnxruntime", self.requested_quantization, self._compute_ops, evidence)


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

        workdir = tempfile.TemporaryDirectory(prefix="squeezebench-ort-")
        so = _session_options(ort, self.threads, workdir.name)
        try:
            sess = ort.InferenceSession(str(artifact.main), sess_options=so, providers=["CPUExecutionProvider"])
        except ort.capi.onnxruntime_pybind11_state.NotImplemented as e:  # no CPU kernel for an op/type
            workdir.cleanup()
            raise BackendUnavailable(f"onnxruntime's CPU execution provider cannot run this artifact: {e}") from None
        except BaseException:
            workdir.cleanup()
            raise
        session = OrtSession(sess, self.threads, Path(artifact.main), workdir)
        session.requested_quantization = artifact.meta.get("quantization")
        return session
