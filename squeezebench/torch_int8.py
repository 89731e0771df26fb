"""torch's int8 module structure: the qconfigs and weight observers, and the skeleton that
rebuilds a saved int8 state_dict. Shared by the quantize step (QAT preparation, int8 weights for
the compact encoding) and the torch backend (conversion when exporting, the skeleton when
loading), so neither imports the other.

u8 x s8 products are summed in pairs into int16 by the AVX2/AVX-512 kernels of CPUs without
VNNI (vpmaddubsw), which saturates when both operands use all 8 bits (255*127*2 > 32767). Every
int8 recipe therefore gives one operand 7 bits, so an artifact is right on any x86 CPU: static
int8 everywhere uses 7-bit weights and 8-bit activations (torch here, ONNX Runtime
``reduce_range=True``, NNCF ``overflow_fix=ENABLE``; see squeezebench/backends/); torch's QAT
keeps torch's x86 default of 7-bit activations.
"""
from __future__ import annotations

import copy
import warnings
from contextlib import contextmanager

import torch
from torch import nn


@contextmanager
def _quiet():
    """torch.ao.quantization warns on import/use (deprecation, reduce_range, uncalibrated observers)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def _weight_observer(per_channel: bool, qat: bool = False, bits: int = 8):
    """Symmetric int8 weights (zero point 0) on a ``bits``-bit scale, per output channel or per
    tensor. The scale is max|w| / (2**(bits-1) - 0.5) and torch rounds the largest weight to
    +-2**(bits-1): 7 bits give |w| <= 64, so u8 x s8 pair sums stay below 2*255*64 = 32640."""
    from torch.ao.quantization import observer as obs

    lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    if per_channel:
        cls = obs.MovingAveragePerChannelMinMaxObserver if qat else obs.PerChannelMinMaxObserver
        return cls.with_args(dtype=torch.qint8, qscheme=torch.per_channel_symmetric, ch_axis=0,
                             quant_min=lo, quant_max=hi)
    cls = obs.MovingAverageMinMaxObserver if qat else obs.MinMaxObserver
    return cls.with_args(dtype=torch.qint8, qscheme=torch.per_tensor_symmetric, quant_min=lo, quant_max=hi)


def torch_qconfig_mapping(method: str, per_channel: bool):
    """The torch.ao QConfigMapping a method uses (also used to rebuild the structure on load)."""
    with _quiet():
        from torch.ao.quantization import FakeQuantize, QConfig, get_default_qconfig_mapping
        from torch.ao.quantization import observer as obs

        if method == "static":
            # Histogram-calibrated 8-bit activations and 7-bit weights, the split ONNX Runtime and
            # NNCF use: either keeps fbgemm's u8*s8 pair sums from saturating on CPUs without VNNI,
            # and activations are where precision counts. On a 2-epoch MobileNetV3-Small/CIFAR-10
            # (58 % top-1), torch's x86 default (7-bit activations) agreed with fp32 on 94.8 % of
            # the test images, this on 96.4 %.
            act = obs.HistogramObserver.with_args(dtype=torch.quint8, quant_min=0, quant_max=255)
            return get_default_qconfig_mapping("x86").set_global(
                QConfig(activation=act, weight=_weight_observer(per_channel, bits=7)))
        if method == "qat":
            # Plain FakeQuantize (not the fused moving-average op) so the TorchScript ONNX
            # exporter turns it into QuantizeLinear/DequantizeLinear. 7-bit activations as in
            # torch's x86 QAT default (see the saturation note above); the exported uint8
            # QuantizeLinear clips at 255 rather than 127, which only differs for activations
            # beyond the range seen in training.
            act = FakeQuantize.with_args(observer=obs.MovingAverageMinMaxObserver, dtype=torch.quint8,
                                         qscheme=torch.per_tensor_affine, quant_min=0, quant_max=127)
            wt = FakeQuantize.with_args(observer=_weight_observer(per_channel, qat=True),
                                        dtype=torch.qint8, quant_min=-128, quant_max=127,
                                        qscheme=torch.per_channel_symmetric if per_channel else torch.per_tensor_symmetric,
                                        **({"ch_axis": 0} if per_channel else {}))
            return get_default_qconfig_mapping("x86").set_global(QConfig(activation=act, weight=wt))
    raise ValueError(f"no qconfig mapping for method {method!r}")


def _dynamic_qconfig(per_channel: bool):
    with _quiet():
        from torch.ao.quantization import per_channel_dynamic_qconfig, default_dynamic_qconfig

        return per_channel_dynamic_qconfig if per_channel else default_dynamic_qconfig


def torch_int8_skeleton(model: nn.Module, quant: dict, in_shape: tuple[int, ...]) -> nn.Module:
    """The int8 module structure ``quant`` (arch.json's ``quant`` entry) describes, built from a
    fresh float ``model``, ready for ``load_state_dict`` of a saved int8 state_dict."""
    with _quiet():
        from torch.ao.quantization import quantize_dynamic
        from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx, prepare_qat_fx

        method, per_channel = quant["method"], bool(quant["per_channel"])
        example = (torch.zeros(1, *in_shape),)
        if method == "dynamic":
            return quantize_dynamic(model.eval(), {nn.Linear: _dynamic_qconfig(per_channel)}, dtype=torch.qint8)
        if method == "static":
            return convert_fx(prepare_fx(model.eval(), torch_qconfig_mapping("static", per_channel), example)).eval()
        if method == "qat":
            prepared = prepare_qat_fx(model.train(), torch_qconfig_mapping("qat", per_channel), example)
            return convert_fx(prepared.eval()).eval()
    raise ValueError(f"unknown torch int8 method {method!r} in arch.json")


def fold_bn_in_qat(qat_model: nn.Module) -> nn.Module:
    """A copy of a prepared QAT model whose Conv+BatchNorm(+ReLU) modules are QAT Conv(+ReLU)
    modules with the BatchNorm folded into weight and bias (running statistics), each keeping its
    weight fake-quantizer: in eval mode ``ConvBn`` fake-quantizes exactly that folded weight, so
    the outputs are the same, and an exported graph reads QuantizeLinear -> DequantizeLinear ->
    Conv, the pattern runtimes fuse into int8 convolutions (unfolded, a BatchNormalization and
    rescaling sit between the conv and its output quantizer, and ONNX Runtime ran the convs in
    float: int8 share 0.05 on ResNet-20)."""
    import torch.ao.nn.intrinsic.qat as nniqat
    import torch.ao.nn.qat as nnqat
    from torch.nn.utils.fusion import fuse_conv_bn_weights

    folded = {nniqat.ConvBn1d: nnqat.Conv1d, nniqat.ConvBn2d: nnqat.Conv2d, nniqat.ConvBn3d: nnqat.Conv3d,
              nniqat.ConvBnReLU1d: nniqat.ConvReLU1d, nniqat.ConvBnReLU2d: nniqat.ConvReLU2d,
              nniqat.ConvBnReLU3d: nniqat.ConvReLU3d}
    out = copy.deepcopy(qat_model).eval()
    for name, mod in list(out.named_modules()):
        cls = folded.get(type(mod))
        if cls is None:
            continue
        bn = mod.bn
        w, b = fuse_conv_bn_weights(mod.weight.detach(), None if mod.bias is None else mod.bias.detach(),
                                    bn.running_mean, bn.running_var, bn.eps, bn.weight.detach(), bn.bias.detach())
        new = cls(mod.in_channels, mod.out_channels, mod.kernel_size, stride=mod.stride, padding=mod.padding,
                  dilation=mod.dilation, groups=mod.groups, bias=True, padding_mode=mod.padding_mode,
                  qconfig=mod.qconfig)
        with torch.no_grad():
            new.weight.copy_(w)
            new.bias.copy_(b)
        new.weight_fake_quant = mod.weight_fake_quant
        if hasattr(mod, "activation_post_process"):
            new.activation_post_process = mod.activation_post_process
        parent, _, leaf = name.rpartition(".")
        setattr(out.get_submodule(parent) if parent else out, leaf, new.eval())
    return out
