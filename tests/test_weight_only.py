"""4-bit weight-only quantization (issue 13): tokens, the group-wise rounding, the Gemm -> MatMul
rewrite, the variant on the tiny model through ONNX Runtime (MatMulNBits) and OpenVINO (NNCF
compress_weights), the torch backend's skip, and the compact encoding of 4-bit codes."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from squeezebench import encoding as enc
from squeezebench.compression import ConfigError, parse_variant_id, variant_id
from squeezebench.compression.weight_only import (
    PARITY_MIN, WeightOnlyConfig, dequantize_groups, quantize_groups,
)


@pytest.mark.parametrize("token,g", [("woq4", 32), ("woq4-g128", 128), ("woq4-g16", 16)])
def test_tokens_round_trip(token, g):
    (cfg,) = parse_variant_id(token)
    assert cfg.group_size == g and variant_id([cfg]) == token


@pytest.mark.parametrize("token,fix", [("woq3", "woq4"), ("woq4-g24", "power of two"), ("woq4-g8", "power of two"),
                                       ("woq4-x", "woq4-g32")])
def test_bad_tokens_name_the_fix(token, fix):
    with pytest.raises(ConfigError, match=fix):
        parse_variant_id(token)


def test_weight_only_is_a_terminal_step():
    assert variant_id(parse_variant_id("gprune90+woq4")) == "gprune90+woq4"
    with pytest.raises(ConfigError, match="last step"):
        parse_variant_id("woq4+prune50")
    with pytest.raises(ConfigError, match="once"):
        parse_variant_id("int8-static+woq4")


def test_group_rounding_is_within_half_a_step_and_uses_16_levels():
    torch.manual_seed(0)
    w = torch.randn(24, 100)  # 100 inputs: the last group of 32 is padded
    codes, scale = quantize_groups(w, 32)
    assert codes.dtype == np.int8 and codes.shape == (24, 100) and scale.shape == (24, 4)
    assert codes.min() >= -8 and codes.max() <= 7
    back = dequantize_groups(codes, scale, 32)
    step = np.repeat(scale, 32, axis=1)[:, :100]
    # rounding error at most half a step, except values clamped from +8 to +7 on the side opposite
    # the group's largest magnitude; that one is exact (code -8)
    err, step = np.abs(back - w.numpy()), np.abs(step)
    assert (err <= step / 2 + 1e-6).mean() > 0.97 and (err <= step + 1e-6).all()
    assert (codes[:, :96].reshape(24, 3, 32).min(axis=2) == -8).all()
    assert len(np.unique(codes[:, :32])) <= 16


def test_gemm_becomes_matmul_with_the_same_outputs(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    import onnx

    from squeezebench.backends.onnx_export import write_onnx
    from squeezebench.backends.onnxruntime_backend import gemm_as_matmul

    torch.manual_seed(0)
    m = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10, bias=False)).eval()
    name = write_onnx(m, (1, 8, 8), tmp_path)
    model = onnx.load(str(tmp_path / name))
    gemms = sum(n.op_type == "Gemm" for n in model.graph.node)  # torch exports a bias-free Linear as MatMul
    assert gemms >= 1 and gemm_as_matmul(model) == gemms
    assert not any(n.op_type == "Gemm" for n in model.graph.node)
    x = torch.randn(5, 1, 8, 8)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    got = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
    np.testing.assert_allclose(got, m(x).detach().numpy(), rtol=1e-5, atol=1e-5)


def test_variant_runs_4bit_on_the_runtimes_and_skips_torch(tiny_workbench):
    pytest.importorskip("onnxruntime")
    import onnx

    wb = tiny_workbench
    v = wb.variant("lenet300_100", "tiny", "woq4-g16")
    assert "PyTorch eager has no 4-bit" in v.unsupported_reason("torch-cpu", "torch")
    assert v.facts["weight_only"]["layers"] == ["fc1", "fc2", "fc3"] and v.facts["parity_min"] == PARITY_MIN
    assert "MatMulNBits" in v.facts["weight_only"]["tools"]["onnx"]
    # ONNX Runtime: every Linear is a 4-bit MatMulNBits
    art = wb.artifact(v, "onnx")
    ops = [n.op_type for n in onnx.load(str(art.main)).graph.node]
    assert ops.count("MatMulNBits") == 3 and "Gemm" not in ops and "MatMul" not in ops
    base_bytes = wb.artifact(wb.baseline("lenet300_100", "tiny"), "onnx").nbytes
    assert art.nbytes < base_bytes / 5  # 4 bits and a scale per 16 weights, against 32 bits
    ev = wb.evaluate(v, "onnxruntime")
    assert ev.parity_agreement >= PARITY_MIN
    facts = wb.session(v, "onnxruntime").facts()
    assert facts["runtime_ops"]["MatMulNBits"] == 3
    # the compact encoding keeps the 4-bit codes (a codebook of 16 levels: 4-bit indices) and their scales
    packed = wb.artifact(v, "compressed").main.read_bytes()
    assert enc.describe(packed)["label"].startswith(("dense-int4-grouped", "sparse-relidx-int4-grouped"))
    decoded = enc.decode(packed)
    w = enc.dequantize(decoded, "fc1.weight", group_size=16)
    np.testing.assert_array_equal(w, v.model.fc1.weight.detach().numpy())
    int8 = wb.static_facts(wb.variant("lenet300_100", "tiny", "int8-dynamic"))["compressed_bytes"]
    assert wb.static_facts(v)["compressed_bytes"] < int8


def test_openvino_compresses_the_weights_to_4_bits(tiny_workbench):
    pytest.importorskip("openvino")
    pytest.importorskip("nncf")
    import openvino as ov

    wb = tiny_workbench
    # NNCF's groups must divide each layer's inputs: widths rounded to 16 (256 -> 144 -> 48 -> 4)
    v = wb.variant("lenet300_100", "tiny", "sprune50-dense-r16+woq4-g16")
    assert v.unsupported_reason("openvino", "openvino") is None
    art = wb.artifact(v, "openvino")
    model = ov.Core().read_model(str(art.main))
    types = {str(op.get_output_element_type(0)) for op in model.get_ops() if op.get_type_name() == "Constant"}
    assert types & {"<Type: 'int4_t'>", "<Type: 'i4'>", "<Type: 'u4'>", "<Type: 'uint4_t'>"}, types
    assert wb.evaluate(v, "openvino").parity_agreement >= PARITY_MIN


def test_a_model_without_linear_layers_is_a_clear_error(tiny_workbench):
    from squeezebench.compression.base import ChainState
    from squeezebench.compression.weight_only import apply_weight_only

    m = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU())
    state = ChainState(tiny_workbench, "convonly", "tiny", m, {"in_shape": [1, 8, 8], "dtype": "float32"}, key={})
    with pytest.raises(ConfigError, match="has no Linear layer"):
        apply_weight_only(WeightOnlyConfig(), state)


def test_openvino_skips_a_group_size_that_does_not_divide_a_layer(tiny_workbench):
    wb = tiny_workbench  # tiny images are 16x16: fc1 has 256 inputs, fc2 300, fc3 100
    v = wb.variant("lenet300_100", "tiny", "woq4-g64")
    reason = v.unsupported_reason("openvino", "openvino")
    assert reason and "fc2 (300 inputs)" in reason and "fc3 (100 inputs)" in reason
    assert v.unsupported_reason("onnxruntime", "onnx") is None  # ORT pads the last group
