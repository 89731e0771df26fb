"""ONNX Runtime, CPU execution provider, loading an exported .onnx file; and the exporter of that
file: the variant's model through torch's ONNX export, or, for int8, ONNX Runtime's own
quantization tools (static and dynamic) and the QDQ export of a fake-quant model (QAT)."""
from __future__ import annotations

import importlib.util
import json
import os
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np
import torch
from torch import nn

import squeezebench.backends.onnx_export as onnx_export
from squeezebench.backends.base import (
    Artifact, Backend, BackendUnavailable, Exporter, Session, Writer, int8_facts, matmul_reduction, precision_of,
    register_backend, register_exporter,
)
from squeezebench.domain import Variant
from squeezebench.keys import produced_by
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
                               "ConvTranspose", "MatMulNBits"})
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


# Why the CPU execution provider cannot run a variant (the bench fixture skips it with this reason).
ORT_NO_FP64_CONV = ("onnxruntime's CPU execution provider has no float64 Conv kernel "
                    "(NOT_IMPLEMENTED); fp64 runs there only for models without convolutions")
ORT_NO_BF16 = ("onnxruntime's CPU execution provider has no bfloat16 kernels (and ONNX Conv does not "
               "admit bfloat16)")


@register_backend
class OnnxRuntimeCPU(Backend):
    """fp64 runs Gemm/MatMul but has no Conv kernel (conv nets skip); bf16 has no kernels (skips).
    An fp16 model runs: ORT inserts Casts and computes in f32, which the record's
    ``runtime.compute_precisions`` shows."""

    name = "onnxruntime"
    artifact_format = "onnx"

    @classmethod
    def unavailable_reason(cls) -> str | None:
        if importlib.util.find_spec("onnxruntime") is None:
            return "onnxruntime is not installed (pip install onnxruntime)"
        return None

    @classmethod
    def support_reason(cls, v: Variant) -> str | None:
        if v.export.dtype == "bfloat16":
            return ORT_NO_BF16
        if v.export.dtype == "float64" and any(isinstance(m, nn.modules.conv._ConvNd) for m in v.model.modules()):
            return ORT_NO_FP64_CONV
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


# -- the exporter ------------------------------------------------------------------------------
# u8 x s8 products are summed in pairs into int16 by the AVX2/AVX-512 kernels of CPUs without
# VNNI (vpmaddubsw), which saturates when both operands use all 8 bits (255*127*2 > 32767); every
# int8 recipe gives one operand 7 bits (see squeezebench.torch_int8), here ``reduce_range=True``:
# 7-bit weights. Measured on LeNet-300-100/MNIST without VNNI: static int8 agreed with fp32 on
# 99.51% of images with 8+8 bits and on 99.92% with reduce_range.
def _calibration_reader(x: torch.Tensor, input_name: str = "input", batch: int = 64):
    from onnxruntime.quantization import CalibrationDataReader

    class Reader(CalibrationDataReader):
        def __init__(self):
            self._it = iter([{input_name: x[i:i + batch].numpy()} for i in range(0, len(x), batch)])

        def get_next(self):
            return next(self._it, None)

    return Reader()


def preprocessed(src: Path, work: Path) -> Path:
    """ORT's quantization pre-processing of an fp32 ONNX file (shape inference + graph cleanup)."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    quant_pre_process(str(src), str(work / "pre.onnx"), skip_symbolic_shape=True)
    return work / "pre.onnx"


def _preprocessed_fp32_onnx(model: nn.Module, in_shape, work: Path) -> Path:
    """fp32 ONNX export of ``model``, pre-processed for quantization."""
    return preprocessed(work / onnx_export.write_onnx(model, in_shape, work), work)


def quantize_static_file(pre: Path, out_file: Path, calibration: torch.Tensor, per_channel: bool,
                         input_name: str = "input") -> None:
    """The one static int8 recipe of ONNX Runtime here: QDQ, MinMax ranges on the calibration
    images, u8 activations and s8 weights with reduce_range (7-bit weights: u8 x s8 pair sums
    saturate int16 on CPUs without VNNI, see squeezebench.torch_int8)."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    quantize_static(str(pre), str(out_file), _calibration_reader(calibration, input_name),
                    quant_format=QuantFormat.QDQ, per_channel=per_channel, reduce_range=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                    calibrate_method=CalibrationMethod.MinMax)


def quantize_dynamic_file(pre: Path, out_file: Path, per_channel: bool) -> None:
    """The one dynamic int8 recipe: MatMulInteger/ConvInteger, 7-bit weights (reduce_range)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(pre), str(out_file), per_channel=per_channel, reduce_range=True,
                     weight_type=QuantType.QInt8)


@produced_by("torch", "onnx")  # torch.onnx exports, the onnx package serialises
def _write_plain(v: Variant, out: Path) -> str:
    return onnx_export.write_variant_onnx(v, out)


@produced_by("torch", "onnx", "onnxruntime")
def _write_static(v: Variant, out: Path) -> str:
    q = v.export.quantization
    with tempfile.TemporaryDirectory() as work:
        pre = _preprocessed_fp32_onnx(onnx_export.float_model(v), v.in_shape, Path(work))
        quantize_static_file(pre, out / "model.onnx", q.calibration, q.per_channel)
    return "model.onnx"


@produced_by("torch", "onnx", "onnxruntime")
def _write_dynamic(v: Variant, out: Path) -> str:
    with tempfile.TemporaryDirectory() as work:
        pre = _preprocessed_fp32_onnx(onnx_export.float_model(v), v.in_shape, Path(work))
        quantize_dynamic_file(pre, out / "model.onnx", v.export.quantization.per_channel)
    return "model.onnx"


@produced_by("torch", "onnx")
def _write_qat(v: Variant, out: Path) -> str:
    return onnx_export.write_qdq_onnx(v.export.quantization.qat_model, v.in_shape, out)


def gemm_as_matmul(model) -> int:
    """Rewrite every ``Gemm(X, W, b)`` of a torch export (alpha = beta = 1, ``transB=1``, W an
    initializer) as ``MatMul(X, W^T) + b`` in place; returns how many. ONNX Runtime's 4-bit
    quantizer takes MatMul only, and torch exports ``nn.Linear`` on 2-D inputs as Gemm."""
    import onnx
    from onnx import helper, numpy_helper

    g = model.graph
    inits = {t.name: t for t in g.initializer}
    nodes, n = [], 0
    for node in g.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        w = inits.get(node.input[1]) if node.op_type == "Gemm" and len(node.input) > 1 else None
        if (w is None or attrs.get("transA", 0) or attrs.get("alpha", 1.0) != 1.0 or attrs.get("beta", 1.0) != 1.0):
            nodes.append(node)
            continue
        wt = numpy_helper.to_array(w)
        if attrs.get("transB", 0):
            wt = wt.T
        wname = f"{node.input[1]}_kn"
        g.initializer.append(numpy_helper.from_array(wt.copy(), wname))
        if len(node.input) > 2 and node.input[2]:
            mm = f"{node.output[0]}_matmul"
            nodes += [helper.make_node("MatMul", [node.input[0], wname], [mm], name=f"{node.name}_MatMul"),
                      helper.make_node("Add", [mm, node.input[2]], list(node.output), name=f"{node.name}_Add")]
        else:
            nodes.append(helper.make_node("MatMul", [node.input[0], wname], list(node.output), name=f"{node.name}_MatMul"))
        n += 1
    del g.node[:]
    g.node.extend(nodes)
    used = {i for node in g.node for i in node.input}
    keep = [t for t in g.initializer if t.name in used]
    del g.initializer[:]
    g.initializer.extend(keep)
    onnx.checker.check_model(model)
    return n


@produced_by("torch", "onnx", "onnxruntime")
def _write_weight_only(v: Variant, out: Path) -> str:
    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    spec = v.export.weight_only
    with tempfile.TemporaryDirectory() as work:
        name = onnx_export.write_onnx(v.export.float_model, v.in_shape, Path(work))
        model = onnx.load(str(Path(work) / name))
    gemm_as_matmul(model)
    q = MatMulNBitsQuantizer(model, bits=spec.bits, block_size=spec.group_size, is_symmetric=True)
    q.process()
    onnx.save_model(q.model.model, str(out / "model.onnx"))
    return "model.onnx"


WEIGHT_ONLY_TOOL = ("onnxruntime.quantization.matmul_nbits_quantizer.MatMulNBitsQuantizer (MatMulNBits, symmetric, "
                    "RTN; Gemm rewritten as MatMul first)")

_INT8_WRITERS = {"static": _write_static, "dynamic": _write_dynamic, "qat": _write_qat}
_INT8_TOOLS = {
    "static": "onnxruntime.quantization.quantize_static (QDQ, MinMax, U8S8, reduce_range: 7-bit weights)",
    "dynamic": "onnxruntime.quantization.quantize_dynamic (MatMulInteger/ConvInteger, reduce_range: 7-bit weights)",
    "qat": "TorchScript ONNX export of the fake-quant model (QDQ), weights folded to int8",
}


@register_exporter
class OnnxExporter(Exporter):
    """``model.onnx``: torch's export of the variant's model (in its dtype); for int8, ONNX Runtime
    quantizes the fp32 export itself (``quantize_static``: QDQ, MinMax on the spec's calibration
    images; ``quantize_dynamic``: MatMulInteger/ConvInteger) or, for QAT, the fake-quant model is
    exported as QDQ with its weights folded to int8."""

    format = "onnx"

    def writer(self, v: Variant) -> Writer:
        q = v.export.quantization
        if v.export.weight_only is not None:
            return _write_weight_only
        return _INT8_WRITERS[q.method] if q is not None else _write_plain

    def code(self) -> tuple:
        return (type(self), onnx_export)

    def files(self, entry: Path, main: str) -> tuple[Path, ...]:
        return onnx_export.onnx_files(entry, main)

    def tool(self, v: Variant) -> str | None:
        q = v.export.quantization
        if v.export.weight_only is not None:
            return WEIGHT_ONLY_TOOL
        return _INT8_TOOLS[q.method] if q is not None else None
