"""OpenVINO on CPU, loading an IR (.xml + .bin); one compiled model per batch shape. And the
exporter of that IR: converted from torch's ONNX export, int8 by ``nncf.quantize``."""
from __future__ import annotations

import importlib.util
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

# Executed layer types that multiply-accumulate; int8 when their activation input is u8/i8
# (a weight-compressed layer shows runtimePrecision i8 but takes f32 activations into an f32 kernel).
COMPUTE_LAYERS = frozenset({"Convolution", "GroupConvolution", "Deconvolution", "FullyConnected", "MatMul", "Gemm"})
# Op types of the IR (ov.Model) that multiply-accumulate.
MODEL_COMPUTE_OPS = frozenset({"Convolution", "GroupConvolution", "ConvolutionBackpropData",
                               "GroupConvolutionBackpropData", "MatMul"})
# A Snippets "Subgraph" layer fuses several IR ops into one jit kernel (e.g. a whole MLP at small
# batch on AVX-512): its compute ops are the IR compute ops named in its originalLayersNames.
FUSED_LAYERS = frozenset({"Subgraph"})


def _type_name(t) -> str:
    return t.get_type_name() if hasattr(t, "get_type_name") else str(t)


def _numel(shape) -> int:
    n = 1
    for d in shape:
        n *= int(d)
    return n


def ov_layer_macs(layer: str, in_shapes: list[list[int]], out_shape: list[int]) -> int | None:
    """Multiply-accumulates of one layer (executed or IR) from its static shapes; None if unknown.

    Convolutions: output elements x weight elements per output channel, which holds for plain
    ([O, I, k...]) and grouped ([G, O/G, I/G, k...]) weights alike."""
    if len(in_shapes) < 2 or not out_shape:
        return None
    act, w = in_shapes[0], in_shapes[1]
    if layer in ("Convolution", "GroupConvolution") and len(out_shape) > 1 and out_shape[1]:
        return _numel(out_shape) * _numel(w) // out_shape[1]
    if layer in ("Deconvolution", "ConvolutionBackpropData", "GroupConvolutionBackpropData") and len(act) > 1:
        return _numel(act) * _numel(w) // act[1]
    if layer == "FullyConnected" and act:
        return _numel(out_shape) * act[-1]
    if layer in ("MatMul", "Gemm") and act:
        return _numel(out_shape) * matmul_reduction(act, out_shape)
    return None


def _shapes(op) -> tuple[list[list[int]], list[int]]:
    ins = [list(op.input(i).get_partial_shape().to_shape()) if op.input(i).get_partial_shape().is_static else []
           for i in range(op.get_input_size())]
    out = op.output(0).get_partial_shape() if op.get_output_size() else None
    return ins, (list(out.to_shape()) if out is not None and out.is_static else [])


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
            # The reshaped IR stays beside it: the static shapes of the ops a fused layer executes.
            self._compiled[shape] = (compiled, compiled.create_infer_request(), m)
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

    def _compute_ops(self, compiled, model, batch: int) -> list[dict]:
        """Every compute op the compiled model executes: layer, activation type, kernel, MACs per image.

        Plain compute layers are read from the executed graph itself (static shapes per compiled
        batch). A fused Snippets layer lists each IR compute op it absorbed, with the IR op's MACs
        and the fused layer's activation type and kernel."""
        ir_ops = {op.get_friendly_name(): op for op in model.get_ordered_ops()
                  if op.get_type_name() in MODEL_COMPUTE_OPS}
        ops = []
        for op in compiled.get_runtime_model().get_ordered_ops():
            info = op.get_rt_info()
            if "layerType" not in info or not op.get_input_size():
                continue
            layer = info["layerType"].astype(str)
            act = op.input(0).get_element_type().get_type_name()
            kernel = info["primitiveType"].astype(str) if "primitiveType" in info else "?"
            entry = {"layer": layer, "activation": act, "kernel": kernel, "precision": precision_of(act)}
            if layer in COMPUTE_LAYERS:
                ins, out = _shapes(op)
                macs = ov_layer_macs(layer, ins, out)
                ops.append({"name": op.get_friendly_name(), "op": layer, **entry,
                            "weight": op.input(1).get_element_type().get_type_name() if len(ins) > 1 else None,
                            "macs": macs // batch if macs is not None else None})
            elif layer in FUSED_LAYERS and "originalLayersNames" in info:
                for name in info["originalLayersNames"].astype(str).split(","):
                    if name in ir_ops:
                        ir = ir_ops[name]
                        macs = ov_layer_macs(ir.get_type_name(), *_shapes(ir))
                        ops.append({"name": name, "op": ir.get_type_name(), **entry, "weight": None,
                                    "macs": macs // batch if macs is not None else None})
        return ops

    def _model_macs(self, model, batch: int) -> int:
        """MACs per image of the IR's compute ops: what the executed ops should add up to."""
        total = 0
        for op in model.get_ordered_ops():
            if op.get_type_name() in MODEL_COMPUTE_OPS:
                total += ov_layer_macs(op.get_type_name(), *_shapes(op)) or 0
        return total // batch

    def facts(self) -> dict:
        """Runtime precision per executed layer type, read from the compiled graph, and how much of
        the model's MACs run int8."""
        if not self._compiled:  # compile the smallest batch, so a session that never ran still says
            ps = self.model.inputs[0].get_partial_shape()
            self._request(tuple(d.get_length() if d.is_static else 1 for d in ps))
        shape, (compiled, _, model) = next(iter(self._compiled.items()))
        prec: Counter = Counter()
        for op in compiled.get_runtime_model().get_ordered_ops():
            info = op.get_rt_info()
            if "runtimePrecision" in info and "layerType" in info:
                prec[f"{info['layerType'].astype(str)}:{info['runtimePrecision'].astype(str)}"] += 1
        batch = max(int(shape[0]), 1)
        ops = self._compute_ops(compiled, model, batch)
        # layer:activation type:kernel, one count per compute op (a fused layer counts each op it runs)
        compute = Counter(f"{op['layer']}:{op['activation']}:{op['kernel']}" for op in ops)
        evidence = {"runtime_precisions": dict(sorted(prec.items())),
                    "compute_layers": dict(sorted(compute.items())),
                    "inference_precision_hint": self.precision_hint,
                    # What the plugin settled on: a CPU without native f16/bf16 runs f32, one with
                    # AVX512-BF16 may run an f16 hint in bf16.
                    "inference_precision_effective": _type_name(compiled.get_property("INFERENCE_PRECISION_HINT")),
                    "model_macs_per_image": self._model_macs(model, batch)}
        counted = sum(op["macs"] or 0 for op in ops)
        if abs(counted - evidence["model_macs_per_image"]) > 0.01 * max(evidence["model_macs_per_image"], 1):
            evidence["macs_note"] = (f"the executed compute ops account for {counted} of the IR's "
                                     f"{evidence['model_macs_per_image']} MACs per image")
        return int8_facts("openvino", self.requested_quantization, ops, evidence)


# Why the CPU plugin cannot run a variant (the bench fixture skips it with this reason).
OPENVINO_NO_FP64 = ("OpenVINO's CPU plugin computes in f32 at most: an f64 model is converted to f32, "
                    "so it would not run in fp64")
# No dynamic (run-time activation range) int8 path for these layers: nncf.compress_weights gives
# int8 weight *storage* decompressed into f32 kernels (executed primitive brgemm_*_f32), and
# DYNAMIC_QUANTIZATION_GROUP_SIZE changes nothing on this model family. Recording that as
# "int8-dynamic" would be a float benchmark under an int8 name.
OPENVINO_NO_DYNAMIC = ("OpenVINO has no dynamic int8 equivalent on CPU: weight compression "
                       "(nncf.compress_weights) runs f32 kernels on decompressed weights; use int8-static")
# The INFERENCE_PRECISION_HINT a variant's dtype asks for (f32 for the rest: no silent bf16).
_PRECISION_HINT = {"float16": "f16", "bfloat16": "bf16"}


@register_backend
class OpenVINOCPU(Backend):
    """An IR with f32 interface; the session passes ``INFERENCE_PRECISION_HINT`` for the variant's
    dtype (f16, bf16, else f32), and the record's ``runtime.inference_precision_effective`` says
    what the plugin settled on (f32 on CPUs without native f16). fp64 and dynamic int8 are
    skipped; bf16 is skipped at load on CPUs without BF16 (its IR holds f32 weights, so the run
    would be plain f32)."""

    name = "openvino"
    artifact_format = "openvino"

    @classmethod
    def unavailable_reason(cls) -> str | None:
        if importlib.util.find_spec("openvino") is None:
            return "openvino is not installed (pip install openvino)"
        return None

    @classmethod
    def support_reason(cls, v: Variant) -> str | None:
        if v.export.dtype == "float64":
            return OPENVINO_NO_FP64
        if v.export.quantization is not None and v.export.quantization.method == "dynamic":
            return OPENVINO_NO_DYNAMIC
        if v.export.weight_only is not None:
            return weight_only_group_reason(v)
        return None

    def load(self, artifact: Artifact) -> Session:
        reason = self.unavailable_reason()
        if reason:
            raise BackendUnavailable(reason)
        import openvino as ov

        core = ov.Core()
        model = core.read_model(str(artifact.main))
        hint = _PRECISION_HINT.get(artifact.meta.get("dtype", "float32"), "f32")
        caps = core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")
        if hint == "bf16" and "BF16" not in caps:
            # The bf16 IR holds f32 weights; without BF16 the plugin would run plain f32.
            raise BackendUnavailable(f"this CPU has no bf16 support in OpenVINO (OPTIMIZATION_CAPABILITIES: "
                                     f"{', '.join(caps)}): a bf16 record would be an f32 run")
        session = OpenVINOSession(core, model, self.threads, hint)
        session.requested_quantization = artifact.meta.get("quantization")
        # Compiled here for batch 1 (kept for the batch-1 records), so an IR the plugin cannot
        # compile is one skip naming the plugin's error, not an error in every test using it.
        rest = list(model.inputs[0].get_partial_shape())[1:]
        if all(d.is_static for d in rest):
            try:
                session._request((1, *(d.get_length() for d in rest)))
            except RuntimeError as e:
                raise BackendUnavailable(compile_failure(ov.__version__, e)) from None
        return session


def weight_only_group_reason(v: Variant) -> str | None:
    """NNCF's 4-bit groups must divide each MatMul's input width (ONNX Runtime pads the last
    group); a layer it cannot group would stay in float under a 4-bit name, so the record skips."""
    g = v.export.weight_only.group_size
    model = v.export.float_model if v.export.float_model is not None else v.model
    bad = [f"{name} ({m.in_features} inputs)" for name, m in model.named_modules()
           if isinstance(m, nn.Linear) and m.in_features % g]
    if not bad:
        return None
    fits = max((d for d in (16, 32, 64, 128) if all(m.in_features % d == 0 for m in model.modules()
                                                      if isinstance(m, nn.Linear))), default=None)
    return (f"NNCF's 4-bit weight compression needs the group size ({g}) to divide every MatMul's input width; "
            f"not {', '.join(bad)}" + (f": woq4-g{fits} runs here" if fits else ""))


def compile_failure(version: str, error: Exception) -> str:
    """The skip reason of an IR OpenVINO's CPU plugin refused to compile: its own message, without
    the 'Exception from <file>' frames."""
    lines = [ln.strip() for ln in str(error).splitlines()
             if ln.strip() and not ln.strip().startswith("Exception from")]
    detail = " / ".join(lines[:2]) or type(error).__name__
    return (f"OpenVINO {version} could not compile this IR for the CPU (a plugin limitation or bug; "
            f"the artifact is kept in the cache): {detail[:400]}")


# -- the exporter ------------------------------------------------------------------------------
def _source_onnx(v: Variant, work: Path) -> Path:
    """The ONNX the IR is converted from: the QDQ export of a QAT model; else the fp32 export of
    the float model (a precision variant's weights are stored by the IR, its compute precision is
    the session's hint); else the variant's model as it is."""
    q = v.export.quantization
    if q is not None and q.method == "qat":
        return work / onnx_export.write_qdq_onnx(q.qat_model, v.in_shape, work)
    if v.export.float_model is not None:
        return work / onnx_export.write_onnx(v.export.float_model, v.in_shape, work)
    return work / onnx_export.write_variant_onnx(v, work)


def _stable_names(model) -> None:
    """OpenVINO names the nodes it creates after a process-wide counter (``Constant_5061``), so
    the same variant's IR differed between processes (a Ray worker and this one). Renamed by
    position in the graph: the IR is a function of the variant, as a content-addressed cache needs."""
    for i, op in enumerate(model.get_ordered_ops()):
        # `<OpType>_<counter>`, the type it had when made (a folded Concat stays `Concat_N`);
        # names from the ONNX file (`/fc1/Gemm`, `onnx::MatMul_12`) never have this shape.
        kind, sep, n = op.get_friendly_name().rpartition("_")
        if sep and n.isdigit() and kind.isalnum() and kind[:1].isupper():
            op.set_friendly_name(f"{kind}_{i}")


def _save(model, v: Variant, out: Path) -> str:
    import openvino as ov

    _stable_names(model)
    # fp16 stores f16 weights (OpenVINO's own fp16 storage); everything else keeps its precision.
    ov.save_model(model, str(out / "model.xml"), compress_to_fp16=v.export.dtype == "float16")
    return "model.xml"


@produced_by("torch", "onnx", "openvino")
def _write_converted(v: Variant, out: Path) -> str:
    import openvino as ov

    with tempfile.TemporaryDirectory() as work:
        model = ov.convert_model(str(_source_onnx(v, Path(work))))
    return _save(model, v, out)


def nncf_quantize_static(ov_model, calibration: torch.Tensor, per_channel: bool):
    """The one static int8 recipe of OpenVINO here (nncf.quantize), for every model source."""
    import nncf
    from nncf.quantization.advanced_parameters import (
        AdvancedQuantizationParameters, OverflowFix, QuantizationParameters,
    )
    from nncf.quantization.range_estimator import RangeEstimatorParametersSet

    items = [calibration[i:i + 1].numpy() for i in range(len(calibration))]
    adv = AdvancedQuantizationParameters(
        # 7-bit weights in every layer: u8 x s8 pair sums saturate int16 on CPUs without VNNI when
        # both operands use 8 bits (see squeezebench.torch_int8); NNCF lost 0.8 pp top-1 on
        # LeNet-300-100/MNIST without the fix.
        overflow_fix=OverflowFix.ENABLE,
        # Global min/max activation ranges (as ORT's MinMax). NNCF's default averages
        # per-sample extremes, which clips more: on LeNet-5/CIFAR-10 it lost 0.54 pp top-1
        # and agreed with fp32 on 96.1% of images, against 0.18 pp and 98.0% with this.
        activations_range_estimator_params=RangeEstimatorParametersSet.MINMAX,
        weights_quantization_params=QuantizationParameters(per_channel=per_channel))
    # fast_bias_correction=False: NNCF's full BiasCorrection. The fast one shifted ResNet-8 students
    # distilled from ResNet-20 to 93.2 % agreement with their fp32 model (top-1 -1.0 pp; torch and
    # ONNX Runtime int8: 98.3-98.4 %); the full one gave 98.2 %, and 98.9 % (ResNet-20) and 97.8 %
    # (MobileNetV3-Small) where the fast one gave 98.8 % and 97.8 % (2-5 s more per model).
    return nncf.quantize(ov_model, nncf.Dataset(items), subset_size=len(items), advanced_parameters=adv,
                         fast_bias_correction=False)


@produced_by("torch", "onnx", "openvino", "nncf")
def _write_static(v: Variant, out: Path) -> str:
    import openvino as ov

    q = v.export.quantization
    with tempfile.TemporaryDirectory() as work:
        ov_model = ov.convert_model(str(_source_onnx(v, Path(work))))
    return _save(nncf_quantize_static(ov_model, q.calibration, q.per_channel), v, out)


@produced_by("torch", "onnx", "openvino", "nncf")
def _write_weight_only(v: Variant, out: Path) -> str:
    import nncf
    import openvino as ov

    spec = v.export.weight_only
    with tempfile.TemporaryDirectory() as work:
        ov_model = ov.convert_model(str(_source_onnx(v, Path(work))))
    # all_layers: the first and last MatMul too (NNCF keeps them 8-bit by default), as the variant says
    compressed = nncf.compress_weights(ov_model, mode=nncf.CompressWeightsMode.INT4_SYM, group_size=spec.group_size,
                                       ratio=1.0, all_layers=True)
    return _save(compressed, v, out)


WEIGHT_ONLY_TOOL = "nncf.compress_weights on the OpenVINO model (INT4_SYM, every MatMul, ratio 1.0)"

_INT8_TOOLS = {
    "static": ("nncf.quantize on the OpenVINO model (overflow_fix=ENABLE: 7-bit weights; "
               "global min/max activation ranges; full bias correction)"),
    "qat": "OpenVINO IR converted from the QDQ ONNX",
}


@register_exporter
class OpenVINOExporter(Exporter):
    """``model.xml`` + ``model.bin``: the IR converted from torch's ONNX export (weights kept at
    their precision, f16 for fp16); static int8 is ``nncf.quantize`` on it, calibrated on the
    spec's images; QAT converts the QDQ export of the fake-quant model."""

    format = "openvino"

    def writer(self, v: Variant) -> Writer:
        q = v.export.quantization
        if v.export.weight_only is not None:
            return _write_weight_only
        return _write_static if q is not None and q.method == "static" else _write_converted

    def code(self) -> tuple:
        return (type(self), onnx_export)

    def files(self, entry: Path, main: str) -> tuple[Path, ...]:
        return (entry / main, (entry / main).with_suffix(".bin"))

    def tool(self, v: Variant) -> str | None:
        q = v.export.quantization
        if v.export.weight_only is not None:
            return WEIGHT_ONLY_TOOL
        return _INT8_TOOLS.get(q.method) if q is not None else None
