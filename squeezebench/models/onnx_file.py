"""``onnx:<path>``: a model given as an exported ONNX file, weights included.

There is no torch module behind it, so nothing is trained and no torch-side technique applies
(pruning, distillation, QAT, scratch controls, the torch backends): only the variants a runtime
makes from the file itself (:data:`RUNTIME_SIDE`), on the runtimes that start from ONNX.

What the file must be, checked in two steps, each failure one :class:`ModelSourceError` naming
the file and the fix:

* when the spec is resolved (pytest start-up, no dataset needed: :func:`inspect_file`): a
  readable file that ``onnx.checker`` accepts, with one input and one output; the input a float32
  ``(batch, C, H, W)`` tensor whose batch alone is dynamic;
* when the dataset is known (:func:`check_fits`): the input's ``(C, H, W)`` are the dataset's,
  and the output is ``(batch, num_classes)`` logits for it.

The model gets its images as every model does: per-channel standardised with the dataset's
training mean and std (``Dataset.normalize``). Needs the ``onnx`` package (imported when used).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from squeezebench.models._registry import InShape, ModelEntry, ModelSourceError
from squeezebench.userspec import oneline

PREFIX = "onnx:"
# The variants a runtime makes from an exported file (ONNX Runtime's and NNCF's own tools).
RUNTIME_SIDE = ("fp32", "fp16", "int8-static", "int8-dynamic")
EXPORT_HINT = ("export it with torch.onnx.export(model, torch.zeros(1, C, H, W), path, input_names=['input'], "
               "output_names=['logits'], dynamic_axes={'input': {0: 'batch'}, 'logits': {0: 'batch'}})")


def is_onnx_spec(spec: str) -> bool:
    return spec.startswith(PREFIX)


def onnx_path(spec: str) -> Path:
    """The file an ``onnx:<path>`` spec names; a relative path is relative to the current directory."""
    p = Path(spec[len(PREFIX):].strip()).expanduser()
    return p if p.is_absolute() else Path(os.getcwd()) / p


def exported_file_reason(spec: str, what: str) -> str:
    """Why a torch-side technique or runtime cannot use the exported file ``spec`` (a skip reason)."""
    return (f"{spec} is an exported file: no torch module to {what}; runtime-side variants only "
            f"({', '.join(RUNTIME_SIDE)})")


@dataclass(frozen=True)
class OnnxModelInfo:
    """What the start-up checks read from the file."""

    path: Path
    input_name: str
    input_dims: tuple  # (batch symbol, C, H, W); the batch is a name or None (dynamic)
    output_name: str
    output_dims: tuple | None  # as declared: ints, names or None per axis; None when undeclared
    opset: int

    @property
    def in_shape(self) -> InShape:
        return tuple(int(d) for d in self.input_dims[1:])  # type: ignore[return-value]


def _dims(value_info) -> tuple | None:
    """Declared dimensions of a graph input/output: ints, symbolic names, or None (unknown)."""
    t = value_info.type
    if not t.HasField("tensor_type") or not t.tensor_type.HasField("shape"):
        return None
    return tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in t.tensor_type.shape.dim)


def _shown(dims: tuple) -> str:
    return "(" + ", ".join("?" if d is None else str(d) for d in dims) + ")"


def _read(spec: str, path: Path, fix: str) -> Any:
    """The ModelProto at ``path`` (external data loaded), or ModelSourceError."""
    import onnx

    if not path.exists():
        raise ModelSourceError(f"model {spec!r}: no such file {path}; give the path of an exported ONNX model "
                               f"({fix})")
    if not path.is_file():
        raise ModelSourceError(f"model {spec!r}: {path} is not a file; give the path of an exported .onnx model")
    try:
        with open(path, "rb") as f:
            f.read(1)
    except OSError as e:
        raise ModelSourceError(f"model {spec!r}: cannot read {path} ({oneline(e)}); make it readable") from None
    try:
        model = onnx.load(str(path))
        onnx.checker.check_model(str(path))  # by path: models with external data or over 2 GB too
    except Exception as e:
        raise ModelSourceError(f"model {spec!r}: {path} is not a valid ONNX model ({oneline(e)}); {fix}") from None
    return model


def inspect_file(spec: str) -> OnnxModelInfo:
    """The start-up checks (see the module docstring); returns what they read."""
    path = onnx_path(spec)
    model = _read(spec, path, EXPORT_HINT)
    g = model.graph
    inits = {t.name for t in g.initializer}
    inputs = [i for i in g.input if i.name not in inits]
    if len(inputs) != 1:
        raise ModelSourceError(
            f"model {spec!r}: {path} has {len(inputs)} inputs ({', '.join(i.name for i in inputs) or 'none'}); "
            "squeezebench feeds one batch of images: export a model with a single (batch, C, H, W) input")
    if len(g.output) != 1:
        raise ModelSourceError(
            f"model {spec!r}: {path} has {len(g.output)} outputs ({', '.join(o.name for o in g.output)}); "
            "export the logits only: one (batch, num_classes) output")
    inp, out = inputs[0], g.output[0]
    elem = inp.type.tensor_type.elem_type if inp.type.HasField("tensor_type") else 0
    if elem != 1:  # onnx.TensorProto.FLOAT
        import onnx

        kind = onnx.TensorProto.DataType.Name(elem) if elem else "not a tensor"
        raise ModelSourceError(f"model {spec!r}: input {inp.name!r} of {path} is {kind}; squeezebench feeds float32 "
                               "images: export the fp32 model (the runtimes make fp16 and int8 from it)")
    dims = _dims(inp)
    if dims is None or len(dims) != 4:
        raise ModelSourceError(
            f"model {spec!r}: input {inp.name!r} of {path} has shape {_shown(dims) if dims else 'undeclared'}; "
            f"squeezebench feeds image batches (batch, C, H, W): {EXPORT_HINT}")
    if any(not isinstance(d, int) or d < 1 for d in dims[1:]):
        raise ModelSourceError(
            f"model {spec!r}: input {inp.name!r} of {path} has shape {_shown(dims)}: only the batch dimension may "
            "be dynamic; export with fixed channels, height and width (dynamic_axes={'input': {0: 'batch'}} only)")
    if isinstance(dims[0], int):
        raise ModelSourceError(
            f"model {spec!r}: input {inp.name!r} of {path} has a fixed batch of {dims[0]} (shape {_shown(dims)}); the "
            f"benchmarks run any batch size: export with a dynamic batch axis ({EXPORT_HINT})")
    out_dims = _dims(out)
    if out_dims is not None and len(out_dims) != 2:
        raise ModelSourceError(
            f"model {spec!r}: output {out.name!r} of {path} has shape {_shown(out_dims)}; expected logits of shape "
            "(batch, num_classes): export the classifier's logits")
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    return OnnxModelInfo(path, inp.name, dims, out.name, out_dims, int(opset))


def check_fits(spec: str, info: OnnxModelInfo, in_shape: InShape, num_classes: int) -> None:
    """The checks that need the dataset: its images' (C, H, W) and its class count, the output
    checked on a batch of two zero images run by ONNX Runtime (when installed)."""
    shape = "x".join(str(v) for v in in_shape)
    if tuple(info.in_shape) != tuple(in_shape):
        raise ModelSourceError(
            f"model {spec!r}: input {info.input_name!r} of {info.path} takes {'x'.join(map(str, info.in_shape))} "
            f"images (C x H x W) but the dataset's are {shape}; export the model for this dataset's images, "
            "or benchmark it on a dataset of its input shape")
    fix = f"export the classifier for this dataset's {num_classes} classes: logits of shape (batch, {num_classes})"
    declared = info.output_dims
    if declared is not None and isinstance(declared[1], int) and declared[1] != num_classes:
        raise ModelSourceError(
            f"model {spec!r}: output {info.output_name!r} of {info.path} has shape {_shown(declared)} but the "
            f"dataset has {num_classes} classes; {fix}")
    try:
        import onnxruntime as ort
    except ImportError:  # the declared shape is all there is to check
        return
    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.intra_op_num_threads = 1
    try:
        sess = ort.InferenceSession(str(info.path), sess_options=so, providers=["CPUExecutionProvider"])
        out = sess.run(None, {info.input_name: np.zeros((2, *in_shape), np.float32)})[0]
    except Exception as e:
        raise ModelSourceError(f"model {spec!r}: ONNX Runtime cannot run {info.path} on a batch of 2 {shape} "
                               f"images ({oneline(e)}); {EXPORT_HINT}") from None
    if tuple(np.shape(out)) != (2, num_classes):
        raise ModelSourceError(
            f"model {spec!r}: output {info.output_name!r} of {info.path} gives {tuple(np.shape(out))} for a batch "
            f"of 2 {shape} images; expected logits of shape (2, {num_classes}) (the dataset has {num_classes} "
            f"classes); {fix}")


def onnx_entry(spec: str) -> ModelEntry:
    """The registry entry of ``onnx:<path>``, after the start-up checks. It builds no module: a
    torch-side use says the file has none."""
    info = inspect_file(spec)

    def build(in_shape: InShape, num_classes: int, **kwargs) -> Any:
        raise ModelSourceError(exported_file_reason(spec, "build, train or run in torch"))

    # fingerprint "": code_fingerprint is the hash of the file's bytes, read when asked.
    return ModelEntry(name=spec, fn=build, source_file=info.path,
                      description=f"exported ONNX file {info.path} (opset {info.opset})", source="onnx")


def content_sha256(path: Path) -> str:
    """The sha256 of the file; for a model with external data, of the file and each data file it
    names (so a changed ``.data`` file is another model too)."""
    import hashlib

    import onnx

    from squeezebench.checkpoints import sha256_of

    model = onnx.load(str(path), load_external_data=False)
    data = sorted({e.value for t in model.graph.initializer for e in t.external_data if e.key == "location"})
    if not data:
        return sha256_of(path)
    h = hashlib.sha256(sha256_of(path).encode())
    for name in data:
        h.update(f"{name}:{sha256_of(path.parent / name)}".encode())
    return h.hexdigest()


# -- the weights ------------------------------------------------------------------------------
def load_model(path: Path) -> Any:
    """The ModelProto at ``path``, external data loaded."""
    import onnx

    return onnx.load(str(path))


def initializers(model: Any) -> dict[str, np.ndarray]:
    """Every initializer of the graph (external data loaded) as a writable numpy copy, in graph order."""
    from onnx import numpy_helper

    return {t.name: np.array(numpy_helper.to_array(t)) for t in model.graph.initializer}


def initializer_state(path: Path, dtype: str = "float32") -> dict:
    """The file's initializers as a state_dict-like mapping of torch tensors (what the compact
    encoding stores, ``squeezebench.encoding.stored_tensors``); float32 ones cast to ``dtype``
    (an fp16 variant stores fp16 weights)."""
    import torch

    out = {}
    for name, a in initializers(load_model(path)).items():
        if a.dtype == np.float32 and dtype != "float32":
            a = a.astype(np.dtype(dtype))
        out[name] = torch.from_numpy(np.ascontiguousarray(a))
    return out


# Nodes whose second input is a weight, and the axis of its output channels.
_WEIGHT_AXIS = {"Conv": 0, "ConvTranspose": 0, "Gemm": 0, "MatMul": -1}


def weight_initializers(model: Any) -> dict[str, tuple[str, int]]:
    """{initializer name: (node op type, output-channel axis)} of every float Conv/ConvTranspose/
    Gemm/MatMul weight (at least 2-D) held as an initializer."""
    inits = {t.name: t for t in model.graph.initializer}
    out: dict[str, tuple[str, int]] = {}
    for n in model.graph.node:
        if n.op_type not in _WEIGHT_AXIS or len(n.input) < 2 or n.input[1] not in inits:
            continue
        t = inits[n.input[1]]
        if t.data_type != 1 or len(t.dims) < 2:  # float32, a matrix or a kernel
            continue
        axis = _WEIGHT_AXIS[n.op_type]
        if n.op_type == "Gemm" and not any(a.name == "transB" and a.i for a in n.attribute):
            axis = -1  # B is (K, N): its columns are the outputs
        out.setdefault(n.input[1], (n.op_type, axis % len(t.dims)))
    return out


def int8_weights(path: Path, per_channel: bool) -> dict:
    """Symmetric int8 of every weight initializer (:func:`weight_initializers`), per output channel
    or per tensor, as torch's weight observer computes it for a torch model's weights
    (``squeezebench.torch_int8``): the int8 weights the compact encoding stores, in the
    ``qweights`` form of ``squeezebench.compression.base.ChainState``."""
    import torch

    from squeezebench.torch_int8 import _quiet, _weight_observer

    model = load_model(path)
    arrays = initializers(model)
    out = {}
    for name, (_, axis) in weight_initializers(model).items():
        w = torch.from_numpy(arrays[name]).float().movedim(axis, 0).contiguous()
        with _quiet():  # torch deprecates quantized tensors; the int8 values are what we need
            ob = _weight_observer(per_channel)()
            ob(w)
            scale, zp = ob.calculate_qparams()
            if per_channel:
                q = torch.quantize_per_channel(w, scale.float(), zp, 0, torch.qint8)
                entry_scale, entry_zp = q.q_per_channel_scales(), q.q_per_channel_zero_points()
            else:
                q = torch.quantize_per_tensor(w, float(scale), int(zp), torch.qint8)
                entry_scale, entry_zp = torch.tensor([q.q_scale()]), torch.tensor([q.q_zero_point()])
            values = q.int_repr().movedim(0, axis).contiguous()
        out[name] = {"values": values.numpy().astype(np.int8), "scale": entry_scale.numpy().astype(np.float32),
                     "zero_point": entry_zp.numpy().astype(np.int64), "axis": axis if per_channel else None}
    return out
