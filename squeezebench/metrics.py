"""Static facts about a model: parameters, nonzero parameters, multiply-accumulates."""
from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_nonzero(model: nn.Module) -> int:
    """Nonzero entries of the weights the model actually uses (pruning masks applied)."""
    return sum(int(torch.count_nonzero(t)) for t in _effective_tensors(model))


def nonzero_per_layer(model: nn.Module) -> dict[str, dict[str, int]]:
    out = {}
    for name, mod in model.named_modules():
        w = getattr(mod, "weight", None)
        if isinstance(w, torch.Tensor) and isinstance(mod, (nn.Linear, nn.Conv2d)):
            b = getattr(mod, "bias", None)
            out[name] = {
                "weight": w.numel(), "weight_nonzero": int(torch.count_nonzero(w)),
                "bias": b.numel() if b is not None else 0,
                "shape": list(w.shape),
            }
    return out


def _effective_tensors(model: nn.Module):
    # torch.nn.utils.prune keeps weight_orig + weight_mask and exposes `weight` as an attribute.
    for mod in model.modules():
        for pname, p in mod.named_parameters(recurse=False):
            if pname.endswith("_orig"):
                yield getattr(mod, pname[: -len("_orig")])
            else:
                yield p


def count_macs(model: nn.Module, in_shape: tuple[int, ...]) -> int:
    """Multiply-accumulates of one forward pass of one image (dense count, as the kernels run it).

    Counted by torch's FlopCounterMode (matmul/conv FLOPs / 2)."""
    p = next(model.parameters())
    x = torch.zeros(1, *in_shape, dtype=p.dtype, device=p.device)
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model.eval()(x)
    return counter.get_total_flops() // 2


# -- an exported ONNX file (``--sb-models onnx:<path>``: squeezebench.models.onnx_file) ----------
# Multiply-accumulate ops counted from their shapes (ONNX shape inference at batch 1).
ONNX_MAC_OPS = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul"})
# Ops that multiply-accumulate too but that these rules do not count: a graph with any of them
# gets no MAC count (None, with a note) rather than an undercount.
ONNX_UNCOUNTED_MAC_OPS = frozenset({
    "LSTM", "GRU", "RNN", "Einsum", "Attention", "MultiHeadAttention", "ConvInteger", "MatMulInteger",
    "QLinearConv", "QLinearMatMul", "QGemm", "MatMulNBits", "DeformConv", "ConvTransposeWithDynamicPads",
})


def onnx_param_counts(model) -> tuple[int, int]:
    """(params, nonzero params) of an ONNX ModelProto: the elements of its floating-point
    initializers (weights, biases; integer constants such as a Reshape's shape are not parameters)."""
    from onnx import numpy_helper

    total = nonzero = 0
    for t in model.graph.initializer:
        a = numpy_helper.to_array(t)
        if a.dtype.kind == "f":
            total += int(a.size)
            nonzero += int(np.count_nonzero(a))
    return total, nonzero


def onnx_nonzero_per_layer(model) -> dict[str, dict]:
    """Per Conv/ConvTranspose/Gemm/MatMul node with a weight initializer: weight size, its nonzero
    entries, bias size and weight shape (the ONNX counterpart of :func:`nonzero_per_layer`)."""
    from onnx import numpy_helper

    inits = {t.name: t for t in model.graph.initializer}
    out = {}
    for i, n in enumerate(model.graph.node):
        if n.op_type not in ONNX_MAC_OPS or len(n.input) < 2 or n.input[1] not in inits:
            continue
        w = numpy_helper.to_array(inits[n.input[1]])
        if w.dtype.kind != "f" or w.ndim < 2:
            continue
        bias = inits.get(n.input[2]) if len(n.input) > 2 else None
        out[n.name or f"{n.op_type}_{i}"] = {
            "weight": int(w.size), "weight_nonzero": int(np.count_nonzero(w)),
            "bias": int(np.prod(bias.dims, dtype=np.int64)) if bias is not None else 0, "shape": list(w.shape)}
    return out


def onnx_macs(model, in_shape: tuple[int, ...]) -> tuple[int | None, str | None]:
    """Multiply-accumulates of one image through an ONNX ModelProto (dense count, as
    :func:`count_macs` counts a torch model): ONNX shape inference with the batch set to 1, then
    per node Conv: output elements x weight elements per output channel; ConvTranspose: input
    elements x the same; Gemm: M x K x N; MatMul: output elements x K. Returns (None, why) when
    some shape stays unknown or the graph has MAC ops these rules do not count."""
    import onnx

    g = model.graph
    uncounted = sorted({n.op_type for n in g.node if n.op_type in ONNX_UNCOUNTED_MAC_OPS})
    if uncounted:
        return None, f"MACs not counted: the graph has {', '.join(uncounted)} (only Conv, ConvTranspose, Gemm, MatMul are)"
    m = onnx.ModelProto()
    m.CopyFrom(model)
    inits = {t.name for t in m.graph.initializer}
    for inp in m.graph.input:
        if inp.name not in inits and inp.type.tensor_type.shape.dim:
            dims = inp.type.tensor_type.shape.dim
            for d, v in zip(dims, (1, *in_shape)):
                d.Clear()
                d.dim_value = int(v)
    try:
        inferred = onnx.shape_inference.infer_shapes(m, data_prop=True)
    except Exception as e:
        return None, f"MACs not counted: ONNX shape inference failed ({type(e).__name__}: {str(e).splitlines()[0][:200]})"
    shapes: dict[str, list] = {t.name: list(t.dims) for t in inferred.graph.initializer}
    for vi in (*inferred.graph.input, *inferred.graph.output, *inferred.graph.value_info):
        if vi.type.HasField("tensor_type") and vi.type.tensor_type.HasField("shape"):
            shapes[vi.name] = [d.dim_value if d.HasField("dim_value") else None
                               for d in vi.type.tensor_type.shape.dim]
    total, unknown = 0, []

    def numel(s: list) -> int:
        return int(np.prod(s, dtype=np.int64))

    for i, n in enumerate(inferred.graph.node):
        if n.op_type not in ONNX_MAC_OPS:
            continue
        act, w, out = (shapes.get(n.input[0]), shapes.get(n.input[1]) if len(n.input) > 1 else None,
                       shapes.get(n.output[0]))
        if any(s is None or not s or any(d is None or d < 1 for d in s) for s in (act, w, out)):
            unknown.append(n.name or f"{n.op_type}_{i}")
            continue
        if n.op_type == "Conv":
            total += numel(out) * numel(w) // w[0]
        elif n.op_type == "ConvTranspose":
            total += numel(act) * numel(w) // w[0]
        elif n.op_type == "Gemm":
            total += numel(act) * out[-1]
        else:  # MatMul
            total += numel(out) * act[-1]
    if unknown:
        return None, (f"MACs not counted: ONNX shape inference left the shapes of {len(unknown)} compute node(s) "
                      f"unknown ({', '.join(unknown[:3])}{', ...' if len(unknown) > 3 else ''})")
    return total, None
