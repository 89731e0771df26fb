"""Floating-point precision variants (fp64, fp16, bf16) on every backend, tiny models and data.

What each runtime really computes in is read from the runtime (ORT's optimized graph, OpenVINO's
effective precision); a precision a backend cannot run is a skip with the reason, not a crash."""
from __future__ import annotations

import pytest
import torch

from squeezebench.backends import BackendUnavailable
from squeezebench.backends.base import facts_problems, int8_facts, precision_of
from squeezebench.compression import ConfigError, parse_variant_id
from squeezebench.backends.onnxruntime_backend import ORT_NO_BF16, ORT_NO_FP64_CONV
from squeezebench.backends.openvino_backend import OPENVINO_NO_FP64
from squeezebench.compression.precision import PrecisionConfig
from squeezebench.workbench import Variant

DATA = "tiny"


@pytest.fixture(scope="module")
def wb(tmp_path_factory):
    from conftest import new_tiny_workbench

    return new_tiny_workbench(tmp_path_factory.mktemp("precision"))


def _within_drop(wb, v, backend):
    base = wb.evaluate(wb.baseline(v.model_name, DATA), "torch-cpu").top1
    e = wb.evaluate(v, backend)
    assert e.top1 >= base - v.facts["allowed_drop_pp"], (backend, e.top1, base)
    assert e.parity_agreement >= v.facts.get("parity_min", 0.995), (backend, e.parity_agreement)


def test_bad_precision_names_the_fix():
    with pytest.raises(ConfigError, match="QuantizeConfig"):
        PrecisionConfig(dtype="int8")
    assert [c.dtype for c in parse_variant_id("fp16")] == ["fp16"]
    assert parse_variant_id("fp32") == []  # the baseline


def test_fp16_artifacts_are_half_the_fp32_bytes(wb):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("openvino")
    base, v = wb.baseline("lenet5", DATA), wb.variant("lenet5", DATA, "fp16")
    assert v.facts["precision"] == "fp16" and v.facts["bits_per_weight"] == 16
    for fmt in ("torch", "onnx", "openvino"):
        ratio = wb.artifact(v, fmt).nbytes / wb.artifact(base, fmt).nbytes
        # Weights halve; the rest (graph, XML, pickle framing) does not, and on this tiny model it is a
        # visible share of the file, most of all in OpenVINO's XML.
        assert 0.4 < ratio < (0.75 if fmt == "openvino" else 0.6), (fmt, ratio)
    sd = torch.load(wb.artifact(v, "torch").main, weights_only=True)
    assert {t.dtype for t in sd.values()} == {torch.float16}


def test_fp16_runs_everywhere_and_the_record_says_in_what(wb):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("openvino")
    v = wb.variant("lenet5", DATA, "fp16")
    assert wb.session(v, "torch-cpu").facts()["compute_modules"] == {"Conv2d:float16": 2, "Linear:float16": 3}
    ort = wb.session(v, "onnxruntime")
    f = ort.facts()
    assert f["input_type"] == "tensor(float16)"
    # ORT's CPU EP has no fp16 Conv/Gemm on most x86 CPUs: it inserts Casts and runs f32. Whatever it
    # does, the record names the weight type of every compute op it runs.
    assert sum(f["compute_precisions"].values()) == 5 and all(
        k.split(":")[1] in ("float16", "float32") for k in f["compute_precisions"])
    if any(k.endswith("float32") for k in f["compute_precisions"]):
        assert f["runtime_ops"].get("Cast", 0) >= 1
    ov = wb.session(v, "openvino")
    ov.predict(torch.zeros(1, 1, 16, 16))
    g = ov.facts()
    # The plugin settles an f16 hint by ISA (f16 where the CPU has it, bf16 with AVX512-BF16, else
    # f32): the record must say which, and its kernels must agree with what it says.
    assert g["inference_precision_hint"] == "f16" and g["inference_precision_effective"] in ("f16", "bf16", "f32")
    effective = precision_of(g["inference_precision_effective"])
    assert len(g["compute_ops"]) == 5 and g["compute_macs_per_image"] == g["model_macs_per_image"], g["compute_ops"]
    assert g["precision_share"].get(effective, 0) > 0.5, g["precision_share"]
    for backend, facts in (("torch-cpu", wb.session(v, "torch-cpu").facts()), ("onnxruntime", f), ("openvino", g)):
        assert facts_problems(facts) == [], (backend, facts)
        assert facts["int8_label"] == "float" and facts["int8_share"] == 0.0
        _within_drop(wb, v, backend)


def _layer(precision: str, act: str, kernel: str, macs: int = 100) -> dict:
    return {"name": f"conv_{kernel}", "op": "Convolution", "layer": "Convolution", "activation": act,
            "kernel": kernel, "precision": precision, "macs": macs}


def test_consistency_check_fails_a_record_that_contradicts_itself():
    """The check the fp16 test relies on can fail: a record claiming f16 whose kernels are f32 does."""
    def ov_facts(effective: str, *ops: dict, **tamper) -> dict:
        f = int8_facts("openvino", None, list(ops), {
            "inference_precision_effective": effective,
            "compute_layers": {f"{o['layer']}:{o['activation']}:{o['kernel']}": 1 for o in ops}})
        return {**f, **tamper}

    f32 = _layer("f32", "f32", "jit_conv_f32")
    bf16 = _layer("bf16", "bf16", "jit_conv_bf16")
    assert facts_problems(ov_facts("f32", f32)) == []
    assert facts_problems(ov_facts("bf16", bf16, _layer("f32", "f32", "gemm_mlas_f32"))) == []
    claims_f16 = facts_problems(ov_facts("f16", f32))
    assert claims_f16 and "no compute layer ran in it" in claims_f16[0], claims_f16
    assert facts_problems(ov_facts("f32", bf16))  # claims f32, ran bf16
    # An op whose stated precision, activation type and kernel name disagree.
    assert any("kernel" in p for p in facts_problems(ov_facts("f16", _layer("f16", "f16", "jit_conv_f32"))))
    assert any("activation" in p for p in facts_problems(ov_facts("f32", _layer("f32", "bf16", "ref_any"))))
    # The summary alone (no op list) is checked too.
    assert facts_problems({"inference_precision_effective": "f16",
                           "compute_layers": {"Convolution:f32:jit_conv_f32": 2}})
    assert facts_problems({"compute_layers": {"Convolution:f16:jit_conv_f32": 1}})


def test_fp64_skips_where_the_runtime_has_no_fp64(wb):
    v = wb.variant("lenet5", DATA, "fp64")
    assert v.formats == ("torch",)
    assert v.unsupported == {"onnxruntime": ORT_NO_FP64_CONV, "openvino": OPENVINO_NO_FP64}
    for backend, reason in v.unsupported.items():
        with pytest.raises(BackendUnavailable, match="fp64|float64"):
            wb.session(v, backend)
        assert v.unsupported_reason(backend, "onnx") == reason
    assert wb.session(v, "torch-cpu").facts()["compute_modules"] == {"Conv2d:float64": 2, "Linear:float64": 3}
    _within_drop(wb, v, "torch-cpu")


def test_fp64_on_onnxruntime_without_convolutions(wb):
    pytest.importorskip("onnxruntime")
    v = wb.variant("lenet300_100", DATA, "fp64")
    assert "onnxruntime" not in v.unsupported and "openvino" in v.unsupported
    f = wb.session(v, "onnxruntime").facts()
    assert f["input_type"] == "tensor(double)"
    assert set(k.split(":")[1] for k in f["compute_precisions"]) == {"float64"}, f["compute_precisions"]
    _within_drop(wb, v, "onnxruntime")


def test_bf16(wb):
    ov = pytest.importorskip("openvino")
    v = wb.variant("lenet5", DATA, "bf16")
    assert v.formats == ("torch", "openvino") and v.unsupported == {"onnxruntime": ORT_NO_BF16}
    with pytest.raises(BackendUnavailable, match="bfloat16"):
        wb.session(v, "onnxruntime")
    _within_drop(wb, v, "torch-cpu")
    if "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"):
        s = wb.session(v, "openvino")
        s.predict(torch.zeros(1, 1, 16, 16))
        g = s.facts()
        assert g["inference_precision_effective"] == "bf16" and facts_problems(g) == [], g
    else:  # an f32 run under a bf16 label would be a lie: skipped with the reason
        with pytest.raises(BackendUnavailable, match="no bf16 support"):
            wb.session(v, "openvino")


def test_bench_fixture_skips_with_the_reason(wb):
    """backend_session skips (with the variant's reason) instead of building a session."""
    from squeezebench.fixtures import backend_session
    from squeezebench.profiles import Case

    v = wb.variant("lenet5", DATA, "fp64")
    fixture = backend_session.__wrapped__ if hasattr(backend_session, "__wrapped__") else None
    if fixture is None:
        pytest.skip("pytest no longer exposes the fixture function")
    with pytest.raises(pytest.skip.Exception, match="no float64 Conv kernel"):
        fixture(Case("lenet5", DATA, "fp64", "onnxruntime", 1), v, wb)
    no_format = Variant("m", DATA, "x", v.model, v.arch, {}, formats=("torch",))
    assert "no onnx artifact" in no_format.unsupported_reason("onnxruntime", "onnx")
