"""int8 quantization per runtime: static post-training, dynamic, and quantization-aware training.

Variant tokens: ``int8-static``, ``int8-dynamic``, ``int8-qat``, optionally followed by
``-cal<N>`` (calibration images, static only), ``-pt`` (per-tensor weights instead of
per-channel) and ``-e<N>`` (QAT epochs), e.g. ``int8-static-cal1024-pt``, ``int8-qat-e3``.

Each runtime is quantized by its own maintained tool, and each artifact is a real file the
backend loads (written by ``state.writers``):

* static: torch.ao FX ``prepare_fx``/``convert_fx`` (x86 engine: fbgemm/oneDNN int8 kernels);
  ORT ``quantize_static`` (QDQ, MinMax) on the fp32 ONNX; ``nncf.quantize`` on the OpenVINO
  model, saved as IR. All three calibrate on the same training images.
* dynamic: torch ``quantize_dynamic`` on ``nn.Linear`` (Conv stays float); ORT
  ``quantize_dynamic`` (MatMulInteger/ConvInteger); OpenVINO is skipped (no equivalent).
* qat: ``prepare_qat_fx`` (FakeQuantize) fine-tuned by ``training.fit`` and cached; torch
  ``convert_fx``; a QDQ ONNX exported from the fake-quant model (weights folded to int8) for
  ORT; the IR converted from that ONNX for OpenVINO.

torch's int8 artifact is the converted module's state_dict (int8 weights, packed params) plus
``arch.json`` with a ``quant`` entry; :func:`torch_int8_skeleton` rebuilds the quantized
structure on load. torch's quantized kernels are CPU-only, so torch-cuda skips int8.

``torch.ao.quantization`` (eager/FX) is deprecated upstream in favour of torchao's pt2e flow,
but pt2e only reaches int8 kernels after ``torch.compile`` (Inductor) lowering; an eager pt2e
model runs quantize/dequantize around float kernels. FX mode is what runs int8 kernels on x86
CPU eagerly and round-trips through a ``weights_only`` state_dict, so it is used here.

Whether int8 kernels actually run is decided by each backend from what its runtime reports
(ORT's optimized graph, OpenVINO's executed primitives, torch's module types) and recorded in
``runtime.int8_share`` (share of the MACs in int8 kernels) and ``runtime.int8_label``; a backend
that runs most of an int8 variant in float kernels says so there.
"""
from __future__ import annotations

import copy
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from squeezebench import artifacts as art
from squeezebench.keys import produced_by
from squeezebench.compression.base import ChainState, CompressionConfig, ConfigError, register_handler
from squeezebench.torch_int8 import (  # noqa: F401  (torch_int8_skeleton: re-exported)
    _dynamic_qconfig, _quiet, _weight_observer, torch_int8_skeleton, torch_qconfig_mapping,
)

METHODS = ("static", "dynamic", "qat")
_DEFAULTS = {"calibration_images": 512, "per_channel": True, "qat_epochs": 2}
_TOKEN = re.compile(r"^int8-(static|dynamic|qat)(?:-cal(\d+))?(-pt)?(?:-e(\d+))?$")

# u8 x s8 products are summed in pairs into int16 by the AVX2/AVX-512 kernels of CPUs without
# VNNI (vpmaddubsw), which saturates when both operands use all 8 bits (255*127*2 > 32767). Every
# recipe here therefore gives one operand 7 bits, so an artifact is right on any x86 CPU: torch
# (x86 qconfigs) uses 7-bit activations, ORT ``reduce_range=True`` and NNCF ``overflow_fix=ENABLE``
# 7-bit weights. Measured on LeNet-300-100/MNIST without VNNI: ORT static agreed with fp32 on 99.51%
# of images with 8+8 bits and on 99.92% with reduce_range; NNCF lost 0.8 pp top-1 without the fix.

# Parity: the share of top-1 predictions a backend must share with the variant's reference
# module (``variant.model``), per method.
# * qat: the reference is the fake-quant model itself, and every runtime executes its exported
#   quantization grid; measured agreement >= 99.8% (LeNet-300-100, LeNet-5 on MNIST and CIFAR-10).
# * static: each runtime calibrates its own ranges (torch histogram, ORT and NNCF min/max), so the
#   only reference common to all three is the fp32 model they approximate. On LeNet-5/CIFAR-10
#   (64% top-1: many near-ties) int8 legitimately flips 2-3.5% of argmaxes against fp32
#   (torch 96.5%, ORT 97.9%, NNCF 98%); a broken quantization flips far more (the saturating
#   8-bit x 8-bit ORT build agreed on 82%).
# * dynamic: activations are quantized per batch at run time; the reference is the fp32 model with
#   torch's int8 weights (``qweights``) dequantized; measured >= 98.4% on the same models.
PARITY_MIN = {"static": 0.95, "dynamic": 0.95, "qat": 0.99}

# OpenVINO's CPU plugin has no dynamic (run-time activation range) int8 path for these layers:
# nncf.compress_weights gives int8 weight *storage* decompressed into f32 kernels (executed
# primitive brgemm_*_f32), and DYNAMIC_QUANTIZATION_GROUP_SIZE changes nothing on this
# model family. Recording that as "int8-dynamic" would be a float benchmark under an int8 name.
OPENVINO_NO_DYNAMIC = ("OpenVINO has no dynamic int8 equivalent on CPU: weight compression "
                       "(nncf.compress_weights) runs f32 kernels on decompressed weights; use int8-static")
TORCH_CUDA_NO_INT8 = ("torch's int8 kernels (quantized engine x86/fbgemm/oneDNN) are CPU-only; "
                      "torch-cuda has no eager int8 path for this artifact")


@dataclass(frozen=True)
class QuantizeConfig(CompressionConfig):
    """int8 quantization of weights and activations.

    method: ``static`` (post-training, activation ranges calibrated on ``calibration_images``
    training images), ``dynamic`` (activation ranges computed per batch at run time; weights
    int8 ahead of time) or ``qat`` (``qat_epochs`` of fine-tuning with fake-quant from the
    baseline, then exported as int8). per_channel: one weight scale per output channel
    (symmetric int8) instead of one per tensor.
    """

    kind = "quantize"
    method: str = "static"
    calibration_images: int = _DEFAULTS["calibration_images"]
    per_channel: bool = _DEFAULTS["per_channel"]
    qat_epochs: int = _DEFAULTS["qat_epochs"]

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ConfigError(f"quantize method must be one of {', '.join(METHODS)}, got {self.method!r}; "
                              "e.g. QuantizeConfig(method='static') or variant token int8-static")
        if not isinstance(self.per_channel, bool):
            raise ConfigError(f"per_channel must be True or False, got {self.per_channel!r}")
        if isinstance(self.calibration_images, bool) or not isinstance(self.calibration_images, int) \
                or self.calibration_images < 1:
            raise ConfigError(f"calibration_images must be an int >= 1 (training images used to calibrate "
                              f"activation ranges), got {self.calibration_images!r}; e.g. calibration_images=512")
        if isinstance(self.qat_epochs, bool) or not isinstance(self.qat_epochs, int) or self.qat_epochs < 1:
            raise ConfigError(f"qat_epochs must be an int >= 1, got {self.qat_epochs!r}; for no training "
                              "use method='static' (int8-static)")
        if self.method != "static" and self.calibration_images != _DEFAULTS["calibration_images"]:
            raise ConfigError(f"calibration_images applies only to method='static' ({self.method} gets its "
                              "activation ranges " + ("at run time" if self.method == "dynamic" else "in training")
                              + "); drop calibration_images or use method='static'")
        if self.method != "qat" and self.qat_epochs != _DEFAULTS["qat_epochs"]:
            raise ConfigError(f"qat_epochs applies only to method='qat'; drop qat_epochs or use method='qat' "
                              f"(int8-qat-e{self.qat_epochs})")
        if self.allowed_drop_pp is not None and not (0 <= self.allowed_drop_pp < 100):
            raise ConfigError(f"allowed_drop_pp is top-1 percentage points in [0, 100), got "
                              f"{self.allowed_drop_pp!r}; e.g. allowed_drop_pp=0.5")

    def token(self) -> str:
        t = f"int8-{self.method}"
        if self.calibration_images != _DEFAULTS["calibration_images"]:
            t += f"-cal{self.calibration_images}"
        if not self.per_channel:
            t += "-pt"
        if self.qat_epochs != _DEFAULTS["qat_epochs"]:
            t += f"-e{self.qat_epochs}"
        return t

    @classmethod
    def parse(cls, token: str):
        m = _TOKEN.match(token)
        if not m:
            if token.startswith("int8"):
                raise ConfigError(f"bad int8 token {token!r}; the grammar is "
                                  "int8-(static|dynamic|qat)[-cal<N>][-pt][-e<N>], e.g. int8-static-cal1024")
            return None
        method, cal, pt, epochs = m.groups()
        return cls(method=method,
                   calibration_images=int(cal) if cal else _DEFAULTS["calibration_images"],
                   per_channel=not pt, qat_epochs=int(epochs) if epochs else _DEFAULTS["qat_epochs"])

    def default_allowed_drop(self) -> float:
        return 0.5


def _write_torch_int8(int8_model: nn.Module, arch: dict, quant: dict, out: Path) -> str:
    """The converted module's state_dict (int8 weight tensors, packed params; loadable with
    ``weights_only=True``) and arch.json whose ``quant`` entry rebuilds the structure."""
    import json

    torch.save(int8_model.state_dict(), out / "model.pt")
    (out / "arch.json").write_text(json.dumps({**arch, "quant": quant}, sort_keys=True))
    return "model.pt"


# -- int8 weights for the compact encoder ------------------------------------------------------
def _qtensor_entry(q: torch.Tensor) -> dict:
    if q.qscheme() in (torch.per_channel_symmetric, torch.per_channel_affine):
        return {"values": q.int_repr().numpy().astype(np.int8),
                "scale": q.q_per_channel_scales().numpy().astype(np.float32),
                "zero_point": q.q_per_channel_zero_points().numpy().astype(np.int64),
                "axis": int(q.q_per_channel_axis())}
    return {"values": q.int_repr().numpy().astype(np.int8), "scale": np.array([q.q_scale()], np.float32),
            "zero_point": np.array([q.q_zero_point()], np.int64), "axis": None}


def _observer_qweights(model: nn.Module, per_channel: bool) -> dict:
    """Symmetric int8 of every Conv/Linear weight with torch's weight observer: exactly the
    weights of torch's static and dynamic int8 artifacts. (ORT and NNCF artifacts hold their own
    7-bit-range weights, see the saturation note; these are the 8-bit ones.)"""
    out = {}
    for name, mod in model.named_modules():
        if isinstance(mod, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            w = mod.weight.detach().float()
            ob = _weight_observer(per_channel)()
            ob(w)
            scale, zp = ob.calculate_qparams()
            q = (torch.quantize_per_channel(w, scale.float(), zp, 0, torch.qint8) if per_channel
                 else torch.quantize_per_tensor(w, float(scale), int(zp), torch.qint8))
            out[f"{name}.weight"] = _qtensor_entry(q)
    return out


def _fakequant_qweights(qat_model: nn.Module) -> dict:
    """The int8 weights a QAT model's weight fake-quantizers settled on (what the export holds)."""
    out = {}
    for name, mod in qat_model.named_modules():
        fq = getattr(mod, "weight_fake_quant", None)
        if fq is None:
            continue
        w = mod.weight.detach().float()
        if fq.is_per_channel:
            q = torch.quantize_per_channel(w, fq.scale.float(), fq.zero_point.long(), fq.ch_axis, torch.qint8)
        else:
            q = torch.quantize_per_tensor(w, float(fq.scale), int(fq.zero_point), torch.qint8)
        out[f"{name}.weight"] = _qtensor_entry(q)
    return out


def _dequantized_copy(model: nn.Module, qweights: dict) -> nn.Module:
    """``model`` with each quantized weight replaced by its int8 value times its scale."""
    ref = copy.deepcopy(model).eval()
    params = dict(ref.named_parameters())
    with torch.no_grad():
        for name, q in qweights.items():
            v = torch.from_numpy(q["values"].astype(np.float32))
            s = torch.from_numpy(q["scale"])
            if q["axis"] is not None:
                s = s.view(-1, *([1] * (v.ndim - 1)))
            params[name].copy_(v * s)
    return ref


# -- ONNX helpers ------------------------------------------------------------------------------
def calibration_inputs(data, n: int, seed: int = 0) -> torch.Tensor:
    """``n`` normalised training images in a seeded random order (all of them if fewer)."""
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(data.x_train), generator=g)[:n]
    return data.normalize(data.x_train[idx])


def _ort_reader(x: torch.Tensor, batch: int = 64):
    from onnxruntime.quantization import CalibrationDataReader

    class Reader(CalibrationDataReader):
        def __init__(self):
            self._it = iter([{"input": x[i:i + batch].numpy()} for i in range(0, len(x), batch)])

        def get_next(self):
            return next(self._it, None)

    return Reader()


def _preprocessed_fp32_onnx(model: nn.Module, in_shape, work: Path) -> Path:
    """fp32 ONNX, then ORT's quantization pre-processing (shape inference + graph cleanup)."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    art.write_onnx(model, in_shape, work)
    quant_pre_process(str(work / "model.onnx"), str(work / "pre.onnx"), skip_symbolic_shape=True)
    return work / "pre.onnx"


def fold_weight_qdq(model):
    """Store QDQ weights as int8: each QuantizeLinear whose inputs are all constants (a weight,
    its scale and zero point) becomes the int8 initializer it would compute, feeding its
    DequantizeLinear directly; then drop what nothing reads. Same numbers (QuantizeLinear's
    round-half-to-even and saturation), a quarter of the weight bytes."""
    import onnx
    from onnx import numpy_helper

    g = model.graph
    const = {t.name: numpy_helper.to_array(t) for t in g.initializer}
    for n in g.node:
        if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value":
            const[n.output[0]] = numpy_helper.to_array(n.attribute[0].t)
        elif n.op_type == "Identity" and n.input[0] in const:
            const[n.output[0]] = const[n.input[0]]
    new_inits, keep = [], []
    for n in g.node:
        ins = [i for i in n.input if i]
        if n.op_type == "QuantizeLinear" and len(ins) == 3 and all(i in const for i in ins) \
                and const[ins[0]].dtype.kind == "f":
            x, s, zp = (const[i] for i in ins)
            axis = next((a.i for a in n.attribute if a.name == "axis"), 1)
            if s.ndim == 1 and s.size > 1:
                shape = [1] * x.ndim
                shape[axis] = -1
                s, zp = s.reshape(shape), zp.reshape(shape)
            info = np.iinfo(zp.dtype)
            q = np.clip(np.rint(x.astype(np.float32) / s.astype(np.float32)) + zp.astype(np.float32),
                        info.min, info.max).astype(zp.dtype)
            new_inits.append(numpy_helper.from_array(q, n.output[0]))
            const[n.output[0]] = q
        else:
            keep.append(n)
    del g.node[:]
    g.node.extend(keep)
    g.initializer.extend(new_inits)
    # Dead-code elimination: nodes and initializers nothing downstream reads.
    needed = {o.name for o in g.output}
    alive = []
    for n in reversed(list(g.node)):
        if any(o in needed for o in n.output):
            alive.append(n)
            needed.update(i for i in n.input if i)
    del g.node[:]
    g.node.extend(reversed(alive))
    inits = [t for t in g.initializer if t.name in needed]
    del g.initializer[:]
    g.initializer.extend(inits)
    onnx.checker.check_model(model)
    return model


def _export_qdq_onnx(qat_model: nn.Module, in_shape, out: Path) -> str:
    """TorchScript export of the fake-quant model (fake_quantize -> QuantizeLinear/DequantizeLinear),
    with weight QDQ folded into int8 initializers."""
    import onnx

    with tempfile.TemporaryDirectory() as work:
        art.write_onnx(qat_model, in_shape, Path(work))
        m = fold_weight_qdq(onnx.load(str(Path(work) / "model.onnx")))
    onnx.save(m, str(out / "model.onnx"))
    return "model.onnx"


# -- the handler -------------------------------------------------------------------------------
@register_handler(QuantizeConfig)
def apply_quantize(cfg: QuantizeConfig, state: ChainState) -> ChainState:
    if state.arch.get("dtype", "float32") != "float32":
        raise ConfigError(f"int8 quantization starts from an fp32 model, got {state.arch['dtype']}; "
                          "drop the precision step")
    float_model = copy.deepcopy(state.model).float().eval()
    in_shape = tuple(state.arch["in_shape"])
    quant = {"method": cfg.method, "per_channel": cfg.per_channel, "engine": torch.backends.quantized.engine}
    info: dict = {"method": cfg.method, "per_channel": cfg.per_channel, "weights": "int8 symmetric",
                  "activations": "uint8 asymmetric"}
    arch = dict(state.arch)
    unsupported = {"torch-cuda": TORCH_CUDA_NO_INT8}

    if cfg.method == "static":
        calib = calibration_inputs(state.data, cfg.calibration_images)
        with _quiet():
            from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

            prepared = prepare_fx(copy.deepcopy(float_model), torch_qconfig_mapping("static", cfg.per_channel),
                                  (torch.zeros(1, *in_shape),))
            with torch.no_grad():
                for b in calib.split(128):
                    prepared(b)
            int8_model = convert_fx(prepared).eval()
        qweights = _observer_qweights(float_model, cfg.per_channel)
        reference = float_model  # see PARITY_MIN: three calibrations, one common reference
        info.update(calibration_images=len(calib), calibration_source="training split (seeded random subset)",
                    tools={"torch": "torch.ao.quantization FX prepare_fx/convert_fx (HistogramObserver, "
                                    "reduce_range activations)",
                           "onnx": "onnxruntime.quantization.quantize_static (QDQ, MinMax, U8S8, "
                                   "reduce_range: 7-bit weights)",
                           "openvino": "nncf.quantize on the OpenVINO model (overflow_fix=ENABLE: 7-bit weights; "
                                       "global min/max activation ranges)"},
                    reference="fp32 model (each runtime calibrates itself)")

        @produced_by("torch", "onnx", "onnxruntime")
        def write_onnx(out: Path) -> str:
            from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

            with tempfile.TemporaryDirectory() as work:
                pre = _preprocessed_fp32_onnx(float_model, in_shape, Path(work))
                quantize_static(str(pre), str(out / "model.onnx"), _ort_reader(calib), quant_format=QuantFormat.QDQ,
                                per_channel=cfg.per_channel, reduce_range=True, activation_type=QuantType.QUInt8,
                                weight_type=QuantType.QInt8, calibrate_method=CalibrationMethod.MinMax)
            return "model.onnx"

        @produced_by("torch", "onnx", "openvino", "nncf")
        def write_openvino(out: Path) -> str:
            import nncf
            import openvino as ov
            from nncf.quantization.advanced_parameters import (
                AdvancedQuantizationParameters, OverflowFix, QuantizationParameters,
            )
            from nncf.quantization.range_estimator import RangeEstimatorParametersSet

            with tempfile.TemporaryDirectory() as work:
                art.write_onnx(float_model, in_shape, Path(work))
                ov_model = ov.convert_model(str(Path(work) / "model.onnx"))
            items = [calib[i:i + 1].numpy() for i in range(len(calib))]
            adv = AdvancedQuantizationParameters(
                overflow_fix=OverflowFix.ENABLE,  # 7-bit weights in every layer (saturation note above)
                # Global min/max activation ranges (as ORT's MinMax). NNCF's default averages
                # per-sample extremes, which clips more: on LeNet-5/CIFAR-10 it lost 0.54 pp top-1
                # and agreed with fp32 on 96.1% of images, against 0.18 pp and 98.0% with this.
                activations_range_estimator_params=RangeEstimatorParametersSet.MINMAX,
                weights_quantization_params=QuantizationParameters(per_channel=cfg.per_channel))
            q = nncf.quantize(ov_model, nncf.Dataset(items), subset_size=len(items), advanced_parameters=adv)
            ov.save_model(q, str(out / "model.xml"), compress_to_fp16=False)
            return "model.xml"

        state.writers.update(onnx=write_onnx, openvino=write_openvino)
        state.formats = ("torch", "onnx", "openvino")

    elif cfg.method == "dynamic":
        with _quiet():
            from torch.ao.quantization import quantize_dynamic

            int8_model = quantize_dynamic(copy.deepcopy(float_model), {nn.Linear: _dynamic_qconfig(cfg.per_channel)},
                                          dtype=torch.qint8)
        qweights = _observer_qweights(float_model, cfg.per_channel)
        # Activations are quantized per batch at run time, so they cannot be simulated per image;
        # the reference simulates the int8 weights of every Conv/Linear (ORT quantizes Conv too).
        reference = _dequantized_copy(float_model, qweights)
        info.update(calibration_images=0, activations="uint8 asymmetric, range computed per batch at run time",
                    reference="fp32 model with torch's int8 weights dequantized",
                    tools={"torch": "torch.ao.quantization.quantize_dynamic on nn.Linear (Conv stays float)",
                           "onnx": "onnxruntime.quantization.quantize_dynamic (MatMulInteger/ConvInteger, "
                                   "reduce_range: 7-bit weights)"})

        @produced_by("torch", "onnx", "onnxruntime")
        def write_onnx(out: Path) -> str:
            from onnxruntime.quantization import QuantType, quantize_dynamic as ort_quantize_dynamic

            with tempfile.TemporaryDirectory() as work:
                pre = _preprocessed_fp32_onnx(float_model, in_shape, Path(work))
                ort_quantize_dynamic(str(pre), str(out / "model.onnx"), per_channel=cfg.per_channel,
                                     reduce_range=True, weight_type=QuantType.QInt8)
            return "model.onnx"

        state.writers.update(onnx=write_onnx)
        state.formats = ("torch", "onnx")
        unsupported["openvino"] = OPENVINO_NO_DYNAMIC

    else:  # qat
        from squeezebench import training
        from squeezebench.recipes import recipe_for

        with _quiet():
            from torch.ao.quantization import disable_observer
            from torch.ao.quantization.quantize_fx import convert_fx, prepare_qat_fx

            prepared = prepare_qat_fx(copy.deepcopy(float_model).train(), torch_qconfig_mapping("qat", cfg.per_channel),
                                      (torch.zeros(1, *in_shape),))
        # The current model's recipe: after distillation that is the student's, not the teacher's.
        base = recipe_for(state.arch["model"], state.dataset_name)
        # Fine-tuning from the trained baseline: 1/20 of its peak learning rate, cosine to zero.
        tcfg = training.TrainConfig(epochs=cfg.qat_epochs, lr=base.lr * 0.05, batch_size=base.batch_size,
                                    optimizer=base.optimizer, momentum=base.momentum, nesterov=base.nesterov,
                                    weight_decay=base.weight_decay, schedule="cosine", augment=base.augment,
                                    label_smoothing=base.label_smoothing, seed=base.seed)

        from squeezebench.compression.prune import keep_zeros

        # After pruning, weights that are zero stay zero through QAT (None for a dense model).
        # The masks are looked up by parameter name, which FX preparation keeps (fc1.weight, ...).
        reapply_zeros = keep_zeros(float_model)

        def build(model: nn.Module) -> dict:
            with _quiet():
                summary = training.fit(model, state.data, tcfg, progress=state.wb.progress,
                                       label=f"{state.model_name}/{state.dataset_name}/int8-qat",
                                       after_step=reapply_zeros)
            model.apply(disable_observer)
            return {k: summary[k] for k in ("epochs", "final_loss", "train_seconds")}

        qat_model, meta = state.cached_model("int8-qat", cfg, build, model=prepared)
        with _quiet():
            qat_model.apply(disable_observer)  # eval() alone does not stop FakeQuantize's observers
            reference = qat_model.eval()
            int8_model = convert_fx(copy.deepcopy(qat_model)).eval()
        qweights = _fakequant_qweights(qat_model)
        info.update(calibration_images=0, qat={"recipe": tcfg.as_dict(), **meta}, reference="the fake-quant model",
                    tools={"torch": "torch.ao.quantization FX prepare_qat_fx (FakeQuantize) + training.fit, "
                                    "convert_fx",
                           "onnx": "TorchScript ONNX export of the fake-quant model (QDQ), weights folded to int8",
                           "openvino": "OpenVINO IR converted from the QDQ ONNX"})

        @produced_by("torch", "onnx")
        def write_onnx(out: Path) -> str:
            return _export_qdq_onnx(reference, in_shape, out)

        @produced_by("torch", "onnx", "openvino")
        def write_openvino(out: Path) -> str:
            # Its own writer (not Workbench's ONNX->IR default) so the cache key carries this
            # code's hash, like the ONNX it converts.
            with tempfile.TemporaryDirectory() as work:
                onnx_main = Path(work) / _export_qdq_onnx(reference, in_shape, Path(work))
                return art.write_openvino(onnx_main, out)

        state.writers.update(onnx=write_onnx, openvino=write_openvino)
        state.formats = ("torch", "onnx", "openvino")

    state.writers["torch"] = lambda out: _write_torch_int8(int8_model, arch, quant, out)
    state.model = reference
    state.qweights = qweights
    state.artifact_meta = {**state.artifact_meta, "quantization": cfg.token()}
    state.facts["quantization"] = info
    state.facts["bits_per_weight"] = 8
    state.facts["parity_min"] = PARITY_MIN[cfg.method]
    state.facts["unsupported_backends"] = {**state.facts.get("unsupported_backends", {}), **unsupported}
    return state
