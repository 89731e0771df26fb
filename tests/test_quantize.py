"""int8 quantization (static, dynamic, QAT) per runtime, on a tiny LeNet-5 and synthetic data.

Each test checks what the runtime reports it runs (ORT's optimized graph, OpenVINO's executed
primitives, torch's module types), not what we asked for."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from squeezebench.backends import Artifact, BackendUnavailable
from squeezebench.backends.base import (
    facts_problems,
    int8_facts,
    int8_label,
    int8_share,
)
from squeezebench.compression import ConfigError, parse_variant_id, variant_id
from squeezebench.compression.quantize import PARITY_MIN, QuantizeConfig
from squeezebench.workbench import Workbench

MODEL, DATA = "lenet5", "tiny"


@pytest.fixture(scope="module")
def wb(tmp_path_factory):
    from conftest import new_tiny_workbench

    return new_tiny_workbench(tmp_path_factory.mktemp("quant"))


def _ops(session) -> dict:
    return session.facts()["runtime_ops"]


def _check_int8_facts(f: dict, backend: str) -> None:
    """A record of a static int8 variant: self-consistent, every compute op's MACs counted, and
    (nearly) all of them int8, whichever kernels this CPU picked."""
    assert facts_problems(f) == [], (backend, f)
    assert len(f["compute_ops"]) == 5 and f["int8_share_basis"] == "macs", (backend, f["compute_ops"])
    assert f["int8_share"] >= 0.9 and f["int8_label"] == "int8" and f["int8_kernels"] is True, (backend, f)


def _check_accuracy(wb, v, backend):
    base = wb.evaluate(wb.baseline(MODEL, DATA), "torch-cpu").top1
    e = wb.evaluate(v, backend)
    assert e.top1 >= base - v.facts["allowed_drop_pp"], (backend, e.top1, base)
    assert e.parity_agreement >= v.facts["parity_min"] == PARITY_MIN[v.facts["quantization"]["method"]], (
        backend, e.parity_agreement)


# -- configuration -----------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs,fix", [
    ({"method": "int4"}, "method='static'"),
    ({"calibration_images": 0}, "calibration_images=512"),
    ({"calibration_images": 2.5}, "calibration_images=512"),
    ({"method": "qat", "qat_epochs": 0}, "method='static'"),
    ({"method": "dynamic", "calibration_images": 100}, "use method='static'"),
    ({"method": "qat", "calibration_images": 100}, "use method='static'"),
    ({"method": "static", "qat_epochs": 3}, "int8-qat-e3"),
    ({"per_channel": "yes"}, "True or False"),
    ({"allowed_drop_pp": -1.0}, "allowed_drop_pp=0.5"),
])
def test_bad_configs_name_the_fix(kwargs, fix):
    with pytest.raises(ConfigError, match=fix):
        QuantizeConfig(**kwargs)


@pytest.mark.parametrize("token,method,cal,per_channel,epochs", [
    # calibration None: the user's config decides, else 512 (see test_calibration_size_from_config)
    ("int8-static", "static", None, True, 2), ("int8-dynamic", "dynamic", None, True, 2),
    ("int8-qat", "qat", None, True, 2), ("int8-static-cal1024-pt", "static", 1024, False, 2),
    ("int8-qat-e3", "qat", None, True, 3), ("int8-dynamic-pt", "dynamic", None, False, 2),
])
def test_tokens_round_trip(token, method, cal, per_channel, epochs):
    (cfg,) = parse_variant_id(token)
    assert (cfg.method, cfg.calibration_images, cfg.per_channel, cfg.qat_epochs) == (method, cal, per_channel, epochs)
    assert variant_id([cfg]) == token
    assert cfg.drop() == 0.5


@pytest.mark.parametrize("vid,fix", [
    ("int8-statc", "int8-static-cal1024"),  # a typo is an error with the grammar, not "unknown token"
    ("int8-dynamic-cal64", "method='static'"),
    ("int8-static+fp16", "move it to the end"),
])
def test_bad_variant_ids(vid, fix):
    with pytest.raises(ConfigError, match=fix):
        parse_variant_id(vid)


def _op(precision: str, macs: int | None, **kw) -> dict:
    return {"name": f"{precision}-{macs}", "op": "Conv", "precision": precision, "macs": macs, **kw}


def test_int8_requested_but_float_is_said():
    with pytest.warns(RuntimeWarning, match="runs float kernels"):
        f = int8_facts("onnxruntime", "int8-static", [_op("f32", 10)], {"runtime_ops": {"Gemm": 1}})
    assert f["int8_kernels"] is False and "int8-static" in f["int8_note"] and f["int8_label"] == "float"
    f = int8_facts("onnxruntime", None, [], {})
    assert f["int8_kernels"] is False and f["int8_share"] is None and "int8_note" not in f


def test_int8_share_weighs_ops_by_macs():
    """One small int8 op beside a big float one is a mostly float model, not an int8 one."""
    ops = [_op("int8", 1_000), _op("f32", 9_000)]
    s = int8_share(ops)
    assert s["int8_share"] == 0.1 and s["int8_share_basis"] == "macs"
    assert s["int8_kernels"] is False and s["int8_any_op"] is True
    assert s["int8_label"] == "mostly float (int8 share 0.10)"
    assert s["precision_share"] == {"f32": 0.9, "int8": 0.1} and s["compute_macs_per_image"] == 10_000
    with pytest.warns(RuntimeWarning, match="runs most of it in float kernels"):
        f = int8_facts("openvino", "int8-static", ops, {})
    assert "mostly float" in f["int8_note"]
    # The same ops the other way round are int8; in between, the label says which way it leans.
    assert int8_share([_op("int8", 9_500), _op("f32", 500)])["int8_label"] == "int8"
    assert int8_share([_op("int8", 7_000), _op("f32", 3_000)])["int8_label"] == "mostly int8 (int8 share 0.70)"
    assert int8_label(0.0) == "float" and int8_label(0.5) == "mostly float (int8 share 0.50)"
    # Where an op's MACs are unknown the share counts compute ops, and says so.
    s = int8_share([_op("int8", None), _op("f32", 9_000), _op("f32", 10)])
    assert s["int8_share_basis"] == "compute ops" and s["int8_share"] == pytest.approx(1 / 3, abs=1e-3)


def test_consistency_check_fails_an_inconsistent_int8_record():
    ops = [_op("int8", 1_000, activation="u8", weight="i8", kernel="jit_conv_I8"), _op("f32", 9_000)]
    good = int8_facts("openvino", None, ops, {})
    assert facts_problems(good) == []
    assert facts_problems({**good, "int8_kernels": True})  # the old "any op" meaning is not the record's
    assert facts_problems({**good, "int8_share": 0.9})
    assert facts_problems({**good, "int8_label": "int8"})
    for bad in (_op("int8", 5, activation="f32"),  # static int8 fed float activations
                _op("int8", 5, activation="u8", weight="f32"),
                _op("int8", 5, kernel="jit_gemm_f32"),
                _op("f32", 5, kernel="jit_gemm_I8")):
        assert facts_problems(int8_facts("openvino", None, [bad], {})), bad
    # A dynamic int8 op quantizes its float input itself: not a contradiction.
    assert facts_problems(int8_facts("x", None, [_op("int8", 5, activation="float32", dynamic=True)], {})) == []


def test_ort_reports_float_kernels_for_a_float_artifact_labelled_int8(wb, tmp_path):
    """The detector reads the graph ORT runs: a float ONNX under an int8 label is reported float."""
    pytest.importorskip("onnxruntime")
    from squeezebench.backends.onnx_export import write_onnx
    from squeezebench.backends.onnxruntime_backend import OnnxRuntimeCPU

    main = tmp_path / write_onnx(wb.baseline(MODEL, DATA).model, (1, 16, 16), tmp_path)
    s = OnnxRuntimeCPU(1).load(Artifact("onnx", main, (main,), meta={"quantization": "int8-static"}))
    s.predict(torch.zeros(2, 1, 16, 16))
    with pytest.warns(RuntimeWarning):
        f = s.facts()
    assert f["int8_kernels"] is False and f["int8_requested"] == "int8-static" and "int8_note" in f


# -- static ------------------------------------------------------------------------------------
def test_static_int8_runs_int8_kernels_everywhere(wb):
    pytest.importorskip("onnxruntime")
    v = wb.variant(MODEL, DATA, "int8-static")
    assert v.facts["bits_per_weight"] == 8 and v.facts["quantization"]["method"] == "static"
    assert v.facts["quantization"]["calibration_images"] == 256  # the tiny train split is smaller than 512
    assert "torch-cuda" in v.unsupported

    ort = wb.session(v, "onnxruntime")
    ops = _ops(ort)
    assert ops.get("QLinearConv", 0) == 2 and ops.get("QGemm", 0) == 3, ops
    _check_int8_facts(ort.facts(), "onnxruntime")
    _check_accuracy(wb, v, "onnxruntime")
    fp32_onnx = wb.artifact(wb.baseline(MODEL, DATA), "onnx").nbytes
    assert wb.artifact(v, "onnx").nbytes < 0.5 * fp32_onnx

    tc = wb.session(v, "torch-cpu")
    f = tc.facts()
    _check_int8_facts(f, "torch-cpu")
    assert f["compute_modules"] == {"ConvReLU2d:int8": 2, "Linear:int8": 1, "LinearReLU:int8": 2}
    # Per-module MACs add up to the model's (FlopCounterMode on the float baseline).
    from squeezebench.metrics import count_macs

    assert f["compute_macs_per_image"] == count_macs(wb.baseline(MODEL, DATA).model, (1, 16, 16))
    _check_accuracy(wb, v, "torch-cpu")
    # The torch artifact reloads into int8 modules whose weights are exactly state.qweights.
    for name, q in v.qweights.items():
        w = getattr(tc.model, name.split(".")[0]).weight()
        assert np.array_equal(w.int_repr().numpy(), q["values"]), name
        assert np.allclose(w.q_per_channel_scales().numpy(), q["scale"]) and q["axis"] == 0
        assert q["values"].dtype == np.int8 and not q["zero_point"].any()  # symmetric
        # Weights on a 7-bit scale (as ONNX Runtime's and NNCF's static recipes): a channel's
        # largest magnitude is 63 or 64 (scale max|w| / 63.5), never 127.
        extremes = np.abs(q["values"].reshape(len(q["values"]), -1)).max(1)
        assert ((extremes == 63) | (extremes == 64)).all(), (name, extremes)
    assert set(v.qweights) == {f"{m}.weight" for m in ("conv1", "conv2", "fc1", "fc2", "fc3")}


def test_static_int8_on_openvino_runs_int8_primitives(wb):
    pytest.importorskip("openvino")
    pytest.importorskip("nncf")
    v = wb.variant(MODEL, DATA, "int8-static")
    s = wb.session(v, "openvino")
    s.predict(torch.zeros(1, 1, 16, 16))
    f = s.facts()
    _check_int8_facts(f, "openvino")
    # Every compute op is listed, also those a fused layer runs (a Snippets Subgraph may take all
    # three FullyConnected layers at batch 1 on AVX-512), and their MACs add up to the IR's.
    layers = f["compute_layers"]
    assert sum(c for k, c in layers.items() if k.split(":")[1] in ("u8", "i8")) == 5, layers
    assert f["compute_macs_per_image"] == f["model_macs_per_image"] and "macs_note" not in f, f
    # Another batch may take other layers (fused or not): the facts hold all the same.
    from squeezebench.backends.openvino_backend import OpenVINOCPU

    s64 = OpenVINOCPU(1).load(wb.artifact(v, "openvino"))
    s64.predict(torch.zeros(64, 1, 16, 16), batch_size=64)
    f64 = s64.facts()
    _check_int8_facts(f64, "openvino")
    assert f64["compute_macs_per_image"] == f["compute_macs_per_image"], (f64["compute_layers"], layers)
    assert wb.artifact(v, "openvino").main.suffix == ".xml"
    _check_accuracy(wb, v, "openvino")


def test_per_tensor_static(wb):
    pytest.importorskip("onnxruntime")
    v = wb.variant(MODEL, DATA, "int8-static-cal64-pt")
    assert v.facts["quantization"]["calibration_images"] == 64
    assert all(q["axis"] is None and q["scale"].shape == (1,) for q in v.qweights.values())
    f = wb.session(v, "onnxruntime").facts()
    assert f["int8_kernels"] is True and facts_problems(f) == []


# -- dynamic -----------------------------------------------------------------------------------
def test_dynamic_int8(wb):
    pytest.importorskip("onnxruntime")
    v = wb.variant(MODEL, DATA, "int8-dynamic")
    ops = _ops(wb.session(v, "onnxruntime"))
    assert ops.get("ConvInteger", 0) == 2, ops
    assert ops.get("MatMulInteger", 0) + ops.get("DynamicQuantizeMatMul", 0) == 3, ops
    f = wb.session(v, "onnxruntime").facts()
    assert facts_problems(f) == [] and f["int8_share"] == 1.0, f  # ConvInteger: the convs run int8 too
    _check_accuracy(wb, v, "onnxruntime")
    # torch's dynamic int8 quantizes the Linears only; the convolutions, most of LeNet-5's MACs, run
    # float32: the share says so, and is what the per-module MACs give.
    with pytest.warns(RuntimeWarning, match="runs most of it in float kernels"):
        f = wb.session(v, "torch-cpu").facts()
    assert f["compute_modules"] == {"Conv2d:float32": 2, "Linear:int8-dynamic": 3}
    assert facts_problems(f) == [], f
    macs = {op["name"]: (op["precision"], op["macs"]) for op in f["compute_ops"]}
    int8 = sum(m for p, m in macs.values() if p == "int8")
    assert {n for n, (p, _) in macs.items() if p == "int8"} == {"fc1", "fc2", "fc3"}
    total = sum(m for _, m in macs.values())
    assert 0 < f["int8_share"] < 1 and f["int8_share"] == pytest.approx(int8 / total, abs=1e-4)
    assert f["int8_label"] == int8_label(f["int8_share"]) and f["int8_any_op"] is True
    assert f["int8_kernels"] is (f["int8_share"] > 0.5)  # a majority only; on this LeNet-5 it is not
    assert "int8_note" in f
    _check_accuracy(wb, v, "torch-cpu")
    # OpenVINO has no dynamic int8: no artifact, a skip reason, and the session refuses.
    assert "openvino" not in v.formats and "dynamic" in v.unsupported["openvino"]
    with pytest.raises(BackendUnavailable, match="no dynamic int8"):
        wb.session(v, "openvino")


# -- quantization-aware training ---------------------------------------------------------------
def test_qat_exports_qdq_that_runtimes_run_int8(wb):
    pytest.importorskip("onnxruntime")
    import onnx

    v = wb.variant(MODEL, DATA, "int8-qat")
    assert v.facts["quantization"]["qat"]["epochs"] == 2
    m = onnx.load(str(wb.artifact(v, "onnx").main))
    types = [n.op_type for n in m.graph.node]
    assert types.count("DequantizeLinear") >= 10 and types.count("QuantizeLinear") >= 5, types
    # Weights are stored as int8 initializers (QuantizeLinear folded), not float + QuantizeLinear.
    int8_inits = {t.name for t in m.graph.initializer if t.data_type == onnx.TensorProto.INT8 and len(t.dims) > 1}
    assert len(int8_inits) == 5

    ort = wb.session(v, "onnxruntime")
    _check_int8_facts(ort.facts(), "onnxruntime")
    assert _ops(ort).get("QLinearConv", 0) == 2
    _check_accuracy(wb, v, "onnxruntime")
    # The reference is the fake-quant model: ORT's int8 graph reproduces it closely.
    assert wb.evaluate(v, "onnxruntime").parity_agreement >= 0.99
    _check_int8_facts(wb.session(v, "torch-cpu").facts(), "torch-cpu")
    _check_accuracy(wb, v, "torch-cpu")

    # Cached: a second Workbench on the same cache does not train again (fit reports each epoch).
    said: list[str] = []
    w2 = Workbench(wb.settings, progress=said.append)
    w2._datasets[DATA] = wb.dataset(DATA)
    v2 = w2.variant(MODEL, DATA, "int8-qat")
    x = wb.dataset(DATA).test_inputs()[:32]
    assert torch.equal(v2.model(x), v.model(x))
    assert not [m for m in said if "epoch" in m], said


def test_qat_on_openvino_runs_int8(wb):
    pytest.importorskip("openvino")
    v = wb.variant(MODEL, DATA, "int8-qat")
    s = wb.session(v, "openvino")
    s.predict(torch.zeros(1, 1, 16, 16))
    _check_int8_facts(s.facts(), "openvino")
    _check_accuracy(wb, v, "openvino")


def test_weight_folding_keeps_the_numbers(wb, tmp_path):
    """fold_weight_qdq stores the same int8 values QuantizeLinear would compute at run time."""
    ort = pytest.importorskip("onnxruntime")
    from squeezebench.backends.onnx_export import write_onnx

    v = wb.variant(MODEL, DATA, "int8-qat")
    write_onnx(v.model, (1, 16, 16), tmp_path)  # unfolded: float weights + QuantizeLinear
    x = {"input": wb.dataset(DATA).test_inputs()[:64].numpy()}
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    run = [ort.InferenceSession(str(p), so, providers=["CPUExecutionProvider"]).run(None, x)[0]
           for p in (tmp_path / "model.onnx", wb.artifact(v, "onnx").main)]
    np.testing.assert_array_equal(run[0], run[1])


def test_qat_of_a_batchnorm_network_runs_int8_convolutions(wb):
    """ResNet-8's convolutions are Conv+BatchNorm: exported with the BatchNorm folded into the conv
    (torch_int8.fold_bn_in_qat), ONNX Runtime fuses every one into an int8 QLinearConv (unfolded,
    it ran them in float: int8 share 0.05 on ResNet-20); the in-process reference is the same
    folded fake-quant model, and torch converts it to int8 modules."""
    pytest.importorskip("onnxruntime")
    v = wb.variant("resnet8", DATA, "int8-qat-e1")
    assert not [type(m).__name__ for m in v.model.modules() if "Bn" in type(m).__name__]
    n_convs = sum(isinstance(m, torch.nn.Conv2d) for m in v.model.modules())
    assert n_convs == 9  # stem, 3 blocks x 2, two projection shortcuts
    ort = wb.session(v, "onnxruntime")
    f = ort.facts()
    assert facts_problems(f) == [] and f["int8_label"] == "int8", f
    assert _ops(ort).get("QLinearConv", 0) == n_convs, _ops(ort)
    assert wb.evaluate(v, "onnxruntime").parity_agreement >= 0.97
    assert wb.session(v, "torch-cpu").facts()["int8_label"] == "int8"


def test_folding_batchnorm_keeps_the_fake_quant_model_and_its_int8_conversion():
    from torch.ao.quantization import disable_observer
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_qat_fx

    from squeezebench.torch_int8 import _quiet, fold_bn_in_qat, torch_qconfig_mapping

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 8, 3, padding=1), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
                              torch.nn.Conv2d(8, 8, 3, padding=1, bias=False), torch.nn.BatchNorm2d(8),
                              torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(8, 4))
    x = torch.randn(64, 1, 16, 16)
    with _quiet():
        qat = prepare_qat_fx(net.train(), torch_qconfig_mapping("qat", True), (x[:1],))
        for _ in range(5):
            qat(torch.randn(32, 1, 16, 16) * 2 + 1)  # BatchNorm statistics and observer ranges move
        qat.apply(disable_observer)
        qat.eval()
        folded = fold_bn_in_qat(qat)
        kinds = [type(m).__name__ for m in folded.modules()]
        assert "ConvBnReLU2d" not in kinds and "ConvBn2d" not in kinds and {"ConvReLU2d", "Conv2d"} <= set(kinds)
        assert [type(m).__name__ for m in qat.modules()].count("ConvBnReLU2d") == 1  # the original is untouched
        torch.testing.assert_close(folded(x), qat(x), atol=0.05, rtol=0)
        torch.testing.assert_close(convert_fx(copy.deepcopy(folded))(x), convert_fx(copy.deepcopy(qat))(x))
