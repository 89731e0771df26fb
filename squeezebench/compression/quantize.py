"""int8 quantization: static post-training, dynamic, and quantization-aware training.

Variant tokens: ``int8-static``, ``int8-dynamic``, ``int8-qat``, optionally followed by
``-cal<N>`` (calibration images, static only), ``-pt`` (per-tensor weights instead of
per-channel) and ``-e<N>`` (QAT epochs), e.g. ``int8-static-cal1024-pt``, ``int8-qat-e3``.

The step says *what* the variant is, in a runtime-free :class:`~squeezebench.domain.QuantSpec`
on the variant's export spec; every runtime quantizes with its own maintained tool when its
backend's exporter writes the artifact (``squeezebench/backends/``):

* static: each runtime calibrates its own activation ranges on the same training images
  (``QuantSpec.calibration``), from the fp32 model (``ExportSpec.float_model``).
* dynamic: activation ranges computed per batch at run time; weights int8 ahead of time.
* qat: ``prepare_qat_fx`` (FakeQuantize) fine-tuned by ``training.fit`` and cached here; the
  fake-quant model with its BatchNorms folded into their convs (``QuantSpec.qat_model``,
  ``torch_int8.fold_bn_in_qat``) is what every runtime exports.

``torch.ao.quantization`` (eager/FX) is deprecated upstream in favour of torchao's pt2e flow,
but pt2e only reaches int8 kernels after ``torch.compile`` (Inductor) lowering; an eager pt2e
model runs quantize/dequantize around float kernels. FX mode is what runs int8 kernels on x86
CPU eagerly and round-trips through a ``weights_only`` state_dict, so it is used here (QAT) and
by the torch backend (conversion).

Whether int8 kernels actually run is decided by each backend from what its runtime reports
and recorded in ``runtime.int8_share`` (share of the MACs in int8 kernels) and
``runtime.int8_label``; a backend that runs most of an int8 variant in float kernels says so there.
"""
from __future__ import annotations

import copy
import re
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from squeezebench.config import INT8_METHODS
from squeezebench.compression.base import ChainState, CompressionConfig, ConfigError, register_handler
from squeezebench.domain import ExportSpec, QuantSpec
from squeezebench.torch_int8 import _quiet, _weight_observer, fold_bn_in_qat, torch_qconfig_mapping

_DEFAULTS = {"calibration_images": 512, "per_channel": True, "qat_epochs": 2}
_TOKEN = re.compile(r"^int8-(static|dynamic|qat)(?:-cal(\d+))?(-pt)?(?:-e(\d+))?$")

# Every int8 recipe gives one operand 7 bits, so an artifact is right on any x86 CPU (u8 x s8
# pair sums saturate int16 on CPUs without VNNI: see squeezebench.torch_int8).

# Parity: the share of top-1 predictions a backend must share with the variant's reference
# module (``variant.model``), per method.
# * qat: the reference is the fake-quant model itself, and every runtime executes its exported
#   quantization grid; measured agreement >= 99.8% (LeNet-300-100, LeNet-5 on MNIST and CIFAR-10).
# * static: each runtime calibrates its own ranges (histogram or min/max), so the only reference
#   common to all of them is the fp32 model they approximate. On LeNet-5/CIFAR-10 (64% top-1: many
#   near-ties) int8 legitimately flipped 2-3.5% of argmaxes against fp32 (96.5% to 98% agreement
#   across the runtimes); a broken quantization flips far more (a saturating 8-bit x 8-bit build
#   agreed on 82%).
# * dynamic: activations are quantized per batch at run time; the reference is the fp32 model with
#   torch's int8 weights (``qweights``) dequantized; measured >= 98.4% on the same models.
PARITY_MIN = {"static": 0.95, "dynamic": 0.95, "qat": 0.99}


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
    # None: the user's [tool.squeezebench] calibration-images for the model and dataset, else 512.
    calibration_images: int | None = None
    per_channel: bool = _DEFAULTS["per_channel"]
    qat_epochs: int = _DEFAULTS["qat_epochs"]

    def __post_init__(self) -> None:
        if self.method not in INT8_METHODS:
            raise ConfigError(f"quantize method must be one of {', '.join(INT8_METHODS)}, got {self.method!r}; "
                              "e.g. QuantizeConfig(method='static') or variant token int8-static")
        if not isinstance(self.per_channel, bool):
            raise ConfigError(f"per_channel must be True or False, got {self.per_channel!r}")
        if self.calibration_images is not None and (
                isinstance(self.calibration_images, bool) or not isinstance(self.calibration_images, int)
                or self.calibration_images < 1):
            raise ConfigError(f"calibration_images must be an int >= 1 (training images used to calibrate "
                              f"activation ranges), got {self.calibration_images!r}; e.g. calibration_images=512")
        if isinstance(self.qat_epochs, bool) or not isinstance(self.qat_epochs, int) or self.qat_epochs < 1:
            raise ConfigError(f"qat_epochs must be an int >= 1, got {self.qat_epochs!r}; for no training "
                              "use method='static' (int8-static)")
        if self.method != "static" and self.calibration_images is not None:
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
        if self.calibration_images is not None:
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
                   calibration_images=int(cal) if cal else None,
                   per_channel=not pt, qat_epochs=int(epochs) if epochs else _DEFAULTS["qat_epochs"])

    def needs_torch_module(self) -> str | None:
        # static and dynamic int8: each runtime quantizes the exported file itself
        return "fine-tune with fake-quant (QAT)" if self.method == "qat" else None

    def default_allowed_drop(self) -> float:
        return 0.5


# -- int8 weights for the compact encoder ------------------------------------------------------
def _qtensor_entry(q: torch.Tensor) -> dict:
    if q.qscheme() in (torch.per_channel_symmetric, torch.per_channel_affine):
        return {"values": q.int_repr().numpy().astype(np.int8),
                "scale": q.q_per_channel_scales().numpy().astype(np.float32),
                "zero_point": q.q_per_channel_zero_points().numpy().astype(np.int64),
                "axis": int(q.q_per_channel_axis())}
    return {"values": q.int_repr().numpy().astype(np.int8), "scale": np.array([q.q_scale()], np.float32),
            "zero_point": np.array([q.q_zero_point()], np.int64), "axis": None}


def _observer_qweights(model: nn.Module, per_channel: bool, bits: int = 8) -> dict:
    """Symmetric int8 of every Conv/Linear weight on ``bits`` bits with torch's weight observer:
    exactly the weights of torch's static (7-bit, as every runtime's static recipe: see
    squeezebench.torch_int8) and dynamic (8-bit) int8 artifacts."""
    out = {}
    for name, mod in model.named_modules():
        if isinstance(mod, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            w = mod.weight.detach().float()
            with _quiet():  # torch deprecates quantized tensors; the int8 values are what we need
                ob = _weight_observer(per_channel, bits=bits)()
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
        with _quiet():  # torch deprecates quantized tensors; the int8 values are what we need
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


# -- calibration ------------------------------------------------------------------------------
def calibration_inputs(data, n: int, seed: int = 0) -> torch.Tensor:
    """``n`` normalised training images in a seeded random order (all of them if fewer)."""
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(data.x_train), generator=g)[:n]
    return data.normalize(data.x_train[idx])


# -- the handler -------------------------------------------------------------------------------
def fp32_start(state: ChainState, what: str) -> nn.Module:
    """A float32 copy of the chain's model for a number-format step (``what``), which must not
    follow a precision step."""
    if state.arch.get("dtype", "float32") != "float32":
        raise ConfigError(f"{what} starts from an fp32 model, got {state.arch['dtype']}; drop the precision step")
    return copy.deepcopy(state.model).float().eval()


@register_handler(QuantizeConfig)
def apply_quantize(cfg: QuantizeConfig, state: ChainState) -> ChainState:
    float_model = fp32_start(state, "int8 quantization")
    in_shape = tuple(state.arch["in_shape"])
    info: dict = {"method": cfg.method, "per_channel": cfg.per_channel, "weights": "int8 symmetric",
                  "activations": "uint8 asymmetric"}
    calib = qat_model = None

    if cfg.method == "static":
        n_calib = cfg.calibration_images or int(
            state.wb.config.fact("calibration-images", state.model_name, state.dataset_name)
            or _DEFAULTS["calibration_images"])
        state.key = {**state.key, "calibration_images": n_calib}  # what was used, wherever it came from
        calib = calibration_inputs(state.data, n_calib)
        qweights = _observer_qweights(float_model, cfg.per_channel, bits=7)
        reference = float_model  # see PARITY_MIN: each runtime calibrates, one common reference
        info.update(weights="int8 symmetric on a 7-bit scale (|w| <= 64)", calibration_images=len(calib), calibration_source="training split (seeded random subset)",
                    reference="fp32 model (each runtime calibrates itself)")

    elif cfg.method == "dynamic":
        qweights = _observer_qweights(float_model, cfg.per_channel)
        # Activations are quantized per batch at run time, so they cannot be simulated per image;
        # the reference simulates the int8 weights of every Conv/Linear (some runtimes quantize Conv too).
        reference = _dequantized_copy(float_model, qweights)
        info.update(calibration_images=0, activations="uint8 asymmetric, range computed per batch at run time",
                    reference="fp32 model with torch's int8 weights dequantized")

    else:  # qat
        from squeezebench import training
        from squeezebench.recipes import recipe_for

        with _quiet():
            from torch.ao.quantization import disable_observer
            from torch.ao.quantization.quantize_fx import prepare_qat_fx

            prepared = prepare_qat_fx(copy.deepcopy(float_model).train(), torch_qconfig_mapping("qat", cfg.per_channel),
                                      (torch.zeros(1, *in_shape),))
        # The current model's recipe: after distillation that is the student's, not the teacher's.
        base = recipe_for(state.arch["model"], state.dataset_name, state.wb.config)
        # Fine-tuning from the trained baseline: 1 % of its peak learning rate, cosine to zero (the
        # usual QAT advice, e.g. NVIDIA's pytorch-quantization guide). At 5 % one epoch knocked
        # ResNet-20 out of its one-cycle minimum: 87.46 % against 88.08 % fp32 and 87.92-87.95 %
        # for post-training int8.
        tcfg = training.TrainConfig(epochs=cfg.qat_epochs, lr=base.lr * 0.01, batch_size=base.batch_size,
                                    optimizer=base.optimizer, momentum=base.momentum, nesterov=base.nesterov,
                                    weight_decay=base.weight_decay, schedule="cosine", augment=base.augment,
                                    label_smoothing=base.label_smoothing, seed=base.seed,
                                    # the recipe's layout (a ResNet-20 QAT step: 822 against 959 ms
                                    # NCHW); float32 arithmetic, whatever the recipe's autocast, so
                                    # the fake-quant ranges are those of the fp32 model
                                    channels_last=base.channels_last)

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
            # BatchNorm folded into its conv: what every runtime exports and converts (see fold_bn_in_qat).
            qat_model = fold_bn_in_qat(qat_model.eval())
            reference = qat_model
        qweights = _fakequant_qweights(qat_model)
        info.update(calibration_images=0, qat={"recipe": tcfg.as_dict(), **meta}, reference="the fake-quant model")

    state.export = ExportSpec(dtype="float32", float_model=float_model, quantization=QuantSpec(
        method=cfg.method, per_channel=cfg.per_channel, label=cfg.token(), calibration=calib, qat_model=qat_model))
    state.model = reference
    state.qweights = qweights
    state.facts["quantization"] = info
    state.facts["bits_per_weight"] = 8
    state.facts.update(parity_min_facts(state.wb.config, cfg.method, state.model_name, state.dataset_name))
    return state


def parity_min_facts(config, method: str, model: str, dataset: str) -> dict:
    """The parity minimum of an int8 ``method``: the user's ``parity-min`` for the pair (with the
    reason the record carries), else PARITY_MIN's."""
    user = config.parity_min(method, model, dataset) if config is not None else None
    if user is None:
        return {"parity_min": PARITY_MIN[method]}
    return {"parity_min": user, "parity_min_reason": f"[tool.squeezebench] parity-min.{method} for {model} on "
                                                     f"{dataset}: {user:.1%} instead of {PARITY_MIN[method]:.1%}"}
