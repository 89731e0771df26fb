"""torch -> ONNX, shared by the runtimes that start from an ONNX file: ONNX Runtime loads it,
OpenVINO converts it to its IR. Every function writes into a directory it is given and returns
the main file's name. Needs torch and the ``onnx`` package, no runtime."""
from __future__ import annotations

import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from squeezebench.domain import Variant

ONNX_OPSET = 17


def write_onnx(model: nn.Module, in_shape: tuple[int, ...], out: Path, dtype: torch.dtype = torch.float32) -> str:
    """ONNX with a dynamic batch dimension (TorchScript exporter: fast, no onnxscript needed)."""
    model = model.eval()
    example = torch.zeros(1, *in_shape, dtype=dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model, (example,), str(out / "model.onnx"), dynamo=False, opset_version=ONNX_OPSET,
            input_names=["input"], output_names=["logits"],
            dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
        )
    return "model.onnx"


def float_model(v: Variant) -> nn.Module:
    """The fp32 model a runtime quantizes or stores in its own precision from (the variant's own
    model when it has no other)."""
    return v.export.float_model if v.export.float_model is not None else v.model


def write_variant_onnx(v: Variant, out: Path) -> str:
    """The variant's model as ONNX, in the variant's dtype."""
    return write_onnx(v.model, v.in_shape, out, dtype=getattr(torch, v.export.dtype))


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


def write_qdq_onnx(qat_model: nn.Module, in_shape: tuple[int, ...], out: Path) -> str:
    """TorchScript export of a fake-quant model (fake_quantize -> QuantizeLinear/DequantizeLinear),
    with weight QDQ folded into int8 initializers."""
    import onnx

    with tempfile.TemporaryDirectory() as work:
        write_onnx(qat_model, in_shape, Path(work))
        m = fold_weight_qdq(onnx.load(str(Path(work) / "model.onnx")))
    onnx.save(m, str(out / "model.onnx"))
    return "model.onnx"


def onnx_files(entry: Path, main: str) -> tuple[Path, ...]:
    """An ONNX file and the external data files it names."""
    import onnx

    main_path = entry / main
    m = onnx.load(str(main_path), load_external_data=False)
    ext = {e.value for t in m.graph.initializer for e in t.external_data if e.key == "location"}
    return (main_path, *(entry / name for name in sorted(ext)))
