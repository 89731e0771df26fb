"""Where a model can come from: one spec string names it, everywhere a model name goes.

* ``lenet5``: a registry name (``@register_model``);
* ``package.module:callable``: the user's function ``(in_shape, num_classes) -> nn.Module``, or a
  zero-argument factory returning an ``nn.Module`` (told apart by its signature; a factory's
  optional ``in_shape`` / ``num_classes`` parameters, if it has them, are passed by name);
* ``torchvision:<name>``: any torchvision classification model (``list_models(module=
  torchvision.models)``), untrained (no pretrained weights), adapted to the dataset by
  :func:`adapt_torchvision`;
* ``timm:<name>``: ``timm.create_model(name, pretrained=False, num_classes=..., in_chans=...)``
  when timm is installed (:class:`ModelUnavailable` otherwise: the benchmark skips with the reason);
* ``onnx:<path>``: an exported ONNX file, checked when resolved (:mod:`squeezebench.models.onnx_file`):
  no torch module, so only runtime-side variants on the runtimes that load ONNX.

:func:`resolve` turns a spec into a :class:`ModelEntry`, so ``create_model(spec, ...)``,
``model_entry(spec).source_file`` and ``.code_fingerprint`` (part of every cache key) work for
each: a callable's fingerprint is the hash of the file that defines it; torchvision's and timm's
are the library's version, the model's name and the hash of our adaptation code.

Every model that is not a registry model is checked once when built: it is an ``nn.Module`` and
maps a batch of the dataset's images to ``(batch, num_classes)`` logits, else
:class:`ModelSourceError` says what it returned and how to fix it.
"""
from __future__ import annotations

import difflib
import hashlib
import inspect
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from squeezebench.keys import library_version, source_hash
from squeezebench.models._registry import (
    SPEC_FORMS, InShape, ModelEntry, ModelSourceError, ModelUnavailable, check_shape, list_models,
)
from squeezebench.models._registry import model_entry as registry_entry
from squeezebench.models.onnx_file import is_onnx_spec, onnx_entry
from squeezebench.userspec import SpecError, import_callable, is_callable_spec, oneline

# Images at most this many pixels high or wide get a small-image stem (see adapt_torchvision).
SMALL_IMAGE = 64


_RESOLVED: dict[str, ModelEntry] = {}


def resolve(spec: str) -> ModelEntry:
    """The :class:`ModelEntry` of ``spec`` (see the module docstring for the forms). A registry
    name that is unknown raises ``KeyError``; any other spec that cannot be resolved raises
    :class:`ModelSourceError` (:class:`ModelUnavailable` when an optional library is missing)."""
    if ":" not in spec:
        return registry_entry(spec)
    if spec not in _RESOLVED:
        prefix, _, name = spec.partition(":")
        if is_onnx_spec(spec):  # before the callable form, which ``onnx:model.onnx`` also matches
            entry = onnx_entry(spec)
        elif prefix == "torchvision":
            entry = _torchvision_entry(spec, name)
        elif prefix == "timm":
            entry = _timm_entry(spec, name)
        elif is_callable_spec(spec):
            entry = _callable_entry(spec)
        else:
            raise ModelSourceError(f"model {spec!r} is not a registry name nor a spec; use one of "
                                   f"{', '.join(list_models())}, or {SPEC_FORMS}")
        _RESOLVED[spec] = entry
    return _RESOLVED[spec]


def model_entry(spec: str) -> ModelEntry:
    """Same as :func:`resolve`: the entry of a registry name or of any other model spec."""
    return resolve(spec)


def create_model(spec: str, in_shape: InShape, num_classes: int, **kwargs) -> nn.Module:
    """Build the model ``spec`` names for inputs of ``in_shape`` (C, H, W) and ``num_classes``
    outputs (``kwargs`` go to its constructor)."""
    shape, n = check_shape(in_shape, num_classes)
    return resolve(spec).fn(shape, n, **kwargs)


def _code_hash(*fns: Callable[..., Any]) -> str:
    """Hash of these functions' own source text: what our adaptation of a library model does."""
    h = hashlib.sha256()
    for fn in fns:
        h.update(inspect.getsource(fn).encode())
    return h.hexdigest()[:12]


def check_output(model: Any, spec: str, in_shape: InShape, num_classes: int, fix: str) -> nn.Module:
    """``model`` if it is an ``nn.Module`` mapping a batch of 2 ``in_shape`` images to
    ``(2, num_classes)`` logits; else :class:`ModelSourceError` naming ``spec`` and ``fix``."""
    if not isinstance(model, nn.Module):
        raise ModelSourceError(f"model {spec!r} returned a {type(model).__name__}, not a torch.nn.Module; "
                               f"{fix}")
    shape = "x".join(str(v) for v in in_shape)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(torch.zeros(2, *in_shape))
    except Exception as e:
        raise ModelSourceError(f"model {spec!r} cannot run on the dataset's {shape} images "
                               f"({oneline(e)}); {fix}") from None
    finally:
        model.train(was_training)
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (2, num_classes):
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ModelSourceError(f"model {spec!r} gives {got} for a batch of 2 {shape} images; expected "
                               f"logits of shape (2, {num_classes}) (the dataset has {num_classes} "
                               f"classes); {fix}")
    return model


# -- package.module:callable ------------------------------------------------------------------
def _call_mode(fn: Callable[..., Any], spec: str) -> tuple[str, tuple[str, ...]]:
    """("shape", ()) for ``fn(in_shape, num_classes)``; ("factory", names) for a zero-argument
    factory, with the optional ``in_shape`` / ``num_classes`` parameters it has."""
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):  # no signature (a builtin): assume the documented form
        return "shape", ()
    P = inspect.Parameter
    positional = [p for p in params if p.kind in (P.POSITIONAL_ONLY, P.POSITIONAL_OR_KEYWORD)]
    required = [p for p in positional if p.default is P.empty]
    kw_required = [p.name for p in params if p.kind == P.KEYWORD_ONLY and p.default is P.empty]
    varargs = any(p.kind == P.VAR_POSITIONAL for p in params)
    form = ("it must take (in_shape, num_classes) (in_shape is (channels, height, width)) or no "
            "argument at all")
    if kw_required:
        raise ModelSourceError(f"model {spec!r} requires keyword argument(s) {', '.join(kw_required)}; {form}")
    if not required and not varargs:
        names = {p.name for p in params}
        return "factory", tuple(n for n in ("in_shape", "num_classes") if n in names)
    if len(required) > 2 or (len(required) == 1 and not varargs and len(positional) < 2):
        raise ModelSourceError(f"model {spec!r} takes {len(required)} required argument(s) "
                               f"({', '.join(p.name for p in required)}); {form}")
    return "shape", ()


def _callable_entry(spec: str) -> ModelEntry:
    try:
        fn, source = import_callable(spec)
    except SpecError as e:
        raise ModelSourceError(f"model {spec!r}: {e}") from None
    if source is None:
        raise ModelSourceError(f"model {spec!r}: no Python source file defines it, so its code cannot be "
                               "part of the cache key; name a function or class defined in a .py file")
    mode, names = _call_mode(fn, spec)
    if mode == "factory":
        fix = (f"{spec} takes no arguments, so it cannot be told the dataset's shape: build the network "
               "for the dataset's channels, size and class count, or give it (in_shape, num_classes) "
               "parameters")
    else:
        fix = f"{spec}(in_shape, num_classes) must return the network for those inputs and classes"

    def build(in_shape: InShape, num_classes: int, **kwargs) -> nn.Module:
        if mode == "factory":
            named = {"in_shape": in_shape, "num_classes": num_classes}
            model = fn(**{n: named[n] for n in names}, **kwargs)
        else:
            model = fn(in_shape, num_classes, **kwargs)
        return check_output(model, spec, in_shape, num_classes, fix)

    doc = (inspect.getdoc(fn) or "").strip().splitlines()
    return ModelEntry(name=spec, fn=build, source_file=source,
                      description=doc[0] if doc else f"{spec} ({mode})",
                      fingerprint=f"callable:{source_hash(source)}", source="callable")


# -- torchvision:<name> -----------------------------------------------------------------------
def _first(model: nn.Module, kind: type) -> tuple[str, nn.Module] | None:
    return next(((n, m) for n, m in model.named_modules() if isinstance(m, kind)), None)


def _set(model: nn.Module, dotted: str, module: nn.Module) -> None:
    parent, _, leaf = dotted.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, leaf, module)


def adapt_torchvision(model: nn.Module, in_shape: InShape, num_classes: int) -> nn.Module:
    """Fit a torchvision classification model, built with ``num_classes`` outputs, to ``in_shape``.

    Generic, by module order (the forward order of every torchvision classification model):

    * the first ``Conv2d`` takes the dataset's channels (a new, Kaiming-initialised conv with the
      same out_channels, bias and kernel);
    * small images (height and width <= ``SMALL_IMAGE``, e.g. 28x28 MNIST, 32x32 CIFAR), as the
      CIFAR variants of these networks do: that first conv gets stride 1, and a kernel larger than
      3 becomes 3x3 with padding 1 (ResNet/ResNeXt/Wide-ResNet, DenseNet, GoogLeNet, AlexNet,
      SqueezeNet 1.0: the 7x7/2 stem becomes 3x3/1); the stem's max-pool (a MaxPool2d before the
      second conv: ResNets, ShuffleNetV2, DenseNet, GoogLeNet, AlexNet) is removed. A patch
      embedding (kernel == stride: ViT, Swin, ConvNeXt) is left as it is;
    * if the classifier does not give ``num_classes`` outputs, the last ``Linear`` is replaced by
      one with ``num_classes`` out_features.
    """
    c, h, w = in_shape
    small = max(h, w) <= SMALL_IMAGE
    first = _first(model, nn.Conv2d)
    if first is not None:
        name, conv = first
        assert isinstance(conv, nn.Conv2d)
        kernel, stride, padding = conv.kernel_size, conv.stride, conv.padding
        patch_embedding = tuple(kernel) == tuple(stride) and kernel != (1, 1)
        if small and not patch_embedding:
            stride = (1, 1)
            if max(kernel) > 3:
                kernel, padding = (3, 3), (1, 1)
            convs_seen = 0
            for mod_name, m in list(model.named_modules()):
                if isinstance(m, nn.Conv2d):
                    convs_seen += 1
                    if convs_seen > 1:
                        break
                elif isinstance(m, nn.MaxPool2d):
                    _set(model, mod_name, nn.Identity())
                    break
        if (c, kernel, stride, padding) != (conv.in_channels, conv.kernel_size, conv.stride, conv.padding):
            groups = conv.groups if c % conv.groups == 0 and conv.out_channels % conv.groups == 0 else 1
            new = nn.Conv2d(c, conv.out_channels, kernel, stride, padding, dilation=conv.dilation,
                            groups=groups, bias=conv.bias is not None, padding_mode=conv.padding_mode)
            nn.init.kaiming_normal_(new.weight, mode="fan_out", nonlinearity="relu")
            if new.bias is not None:
                nn.init.zeros_(new.bias)
            _set(model, name, new)
    linears = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    if linears and linears[-1][1].out_features != num_classes:
        n, last = linears[-1]
        _set(model, n, nn.Linear(last.in_features, num_classes, bias=last.bias is not None))
    return model


def _torchvision_kwargs(name: str, in_shape: InShape) -> dict:
    """Constructor arguments some families need: ViT's image size (square, a multiple of its patch
    size), no auxiliary heads for GoogLeNet / Inception-v3 (their outputs must be plain logits)."""
    kw: dict[str, Any] = {}
    if name.startswith("vit_"):
        kw["image_size"] = in_shape[1]
    if name in ("googlenet", "inception_v3"):
        kw.update(aux_logits=False, init_weights=True)
    return kw


def _torchvision_entry(spec: str, name: str) -> ModelEntry:
    import torchvision
    from torchvision import models as tvm

    known = tvm.list_models(module=tvm)
    if name not in known:
        close = difflib.get_close_matches(name, known, n=5, cutoff=0.5)
        raise ModelSourceError(
            f"unknown torchvision model {name!r} (torchvision {torchvision.__version__}); "
            + (f"did you mean {', '.join('torchvision:' + c for c in close)}? " if close else "")
            + "the classification models are torchvision.models.list_models(module=torchvision.models), "
            f"e.g. torchvision:{', torchvision:'.join(known[:6])}")
    builder = tvm.get_model_builder(name)
    fix = (f"torchvision:{name} is adapted to the dataset's channels, small images and classes "
           "(README 'Models and data from anywhere'); pick a model that fits this input size")

    def build(in_shape: InShape, num_classes: int, **kwargs) -> nn.Module:
        try:
            model = tvm.get_model(name, weights=None, num_classes=num_classes,
                                  **{**_torchvision_kwargs(name, in_shape), **kwargs})
            model = adapt_torchvision(model, in_shape, num_classes)
        except Exception as e:
            raise ModelSourceError(f"model {spec!r} cannot be built for {in_shape} inputs and "
                                   f"{num_classes} classes ({oneline(e)}); {fix}") from None
        return check_output(model, spec, in_shape, num_classes, fix)

    src = Path(inspect.getsourcefile(builder) or tvm.__file__)
    adapter = _code_hash(adapt_torchvision, _torchvision_kwargs, build, check_output)
    return ModelEntry(name=spec, fn=build, source_file=src,
                      description=f"torchvision {name}, untrained, adapted to the dataset",
                      fingerprint=f"torchvision=={library_version('torchvision')}:{name}:adapter={adapter}",
                      source="torchvision")


# -- timm:<name> ------------------------------------------------------------------------------
def _timm_entry(spec: str, name: str) -> ModelEntry:
    try:
        import timm
    except ImportError:
        raise ModelUnavailable(f"model {spec!r} needs timm, which is not installed: "
                               "pip install 'squeezebench[timm]' (or pip install timm)") from None
    if not timm.is_model(name):
        known = timm.list_models()
        close = difflib.get_close_matches(name, known, n=5, cutoff=0.5)
        raise ModelSourceError(
            f"unknown timm model {name!r} (timm {timm.__version__}); "
            + (f"did you mean {', '.join('timm:' + c for c in close)}? " if close else "")
            + "the names are timm.list_models()")
    fix = f"timm:{name} gets in_chans and num_classes only: pick a model that fits this input size"

    def build(in_shape: InShape, num_classes: int, **kwargs) -> nn.Module:
        try:
            model = timm.create_model(name, pretrained=False, num_classes=num_classes,
                                      in_chans=in_shape[0], **kwargs)
        except Exception as e:
            raise ModelSourceError(f"model {spec!r} cannot be built for {in_shape} inputs and "
                                   f"{num_classes} classes ({oneline(e)}); {fix}") from None
        return check_output(model, spec, in_shape, num_classes, fix)

    try:
        src = Path(inspect.getsourcefile(timm.models.model_entrypoint(name)) or timm.__file__)
    except Exception:  # older timm layouts
        src = Path(timm.__file__)
    return ModelEntry(name=spec, fn=build, source_file=src,
                      description=f"timm {name}, untrained",
                      fingerprint=f"timm=={library_version('timm')}:{name}:adapter={_code_hash(build, check_output)}",
                      source="timm")
