"""Latency statistics of a record against known samples, and --sb-min-time reaching pytest-benchmark."""
from __future__ import annotations

import json
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest

from squeezebench.record import benchmark_rounds, latency_fields
from squeezebench.domain import Evaluation


def test_percentiles_of_known_samples():
    # 1..100 µs per call at batch 1, shuffled: percentiles must not depend on order.
    samples = [i * 1e-6 for i in np.random.default_rng(0).permutation(np.arange(1, 101))]
    f = latency_fields(samples, batch=1)
    assert f["per_image_us"] == pytest.approx(50.5)
    assert f["latency_p50_us"] == pytest.approx(50.5)
    assert f["latency_p90_us"] == pytest.approx(90.1)  # linear interpolation: 90 + 0.1 * (91 - 90)
    assert f["latency_p99_us"] == pytest.approx(99.01)
    assert f["latency_mean_us"] == pytest.approx(50.5)
    assert f["latency_stddev_us"] == pytest.approx(29.011491975882016)  # sample stddev (ddof=1)
    assert f["images_per_s"] == pytest.approx(1e6 / 50.5)
    assert f["rounds"] == 100
    assert "percentiles" in f["latency_method"] and "only" not in f["latency_method"]


def test_per_image_divides_by_batch():
    f = latency_fields([400e-6, 800e-6, 1200e-6], batch=4)
    assert f["per_image_us"] == pytest.approx(200.0)
    assert f["latency_p90_us"] == pytest.approx(280.0)  # per image: 100, 200, 300
    assert f["images_per_s"] == pytest.approx(5000.0)
    assert "only 3 rounds" in f["latency_method"]  # few rounds: p99 is said to be near the max


def test_single_round_and_no_rounds():
    assert latency_fields([1e-3], 1)["latency_stddev_us"] == 0.0
    none = latency_fields(None, 1)
    assert none["per_image_us"] is None and none["latency_method"].startswith("unavailable")


def test_benchmark_rounds_reads_data_and_options():
    stats = SimpleNamespace(stats=SimpleNamespace(data=[1e-4, 2e-4]), options={"max_time": 1.5, "min_rounds": 7})
    rounds, facts = benchmark_rounds(SimpleNamespace(stats=stats))
    assert rounds == [1e-4, 2e-4]
    assert facts == {"latency_max_time_s": 1.5, "latency_min_rounds": 7}
    assert benchmark_rounds(SimpleNamespace(stats=None)) == (None, {})


def _run_pytest(tmp_path, *args):
    (tmp_path / "test_x.py").write_text("def test_x(benchmark):\n    benchmark(lambda: sum(range(50)))\n")
    cmd = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider",
           "--rootdir", str(tmp_path), "-q", str(tmp_path / "test_x.py"), *args]
    return subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=120)


def test_min_time_sets_benchmark_max_time(tmp_path):
    out = tmp_path / "b.json"
    p = _run_pytest(tmp_path, "--sb-min-time", "0.3", "--benchmark-max-time", "0.05",
                    "--benchmark-min-rounds", "2", f"--benchmark-json={out}")
    assert p.returncode == 0, p.stdout + p.stderr
    b = json.loads(out.read_text())["benchmarks"][0]
    assert b["options"]["max_time"] == pytest.approx(0.3)
    assert b["options"]["min_rounds"] == 5  # raised to the minimum
    assert b["stats"]["rounds"] >= 5


def test_min_time_below_pytest_benchmark_default_shortens(tmp_path):
    """`make gate` passes --sb-min-time 0.5: it must measure 0.5 s, not pytest-benchmark's 1.0."""
    out = tmp_path / "b.json"
    p = _run_pytest(tmp_path, "--sb-min-time", "0.5", f"--benchmark-json={out}")
    assert p.returncode == 0, p.stdout + p.stderr
    assert json.loads(out.read_text())["benchmarks"][0]["options"]["max_time"] == pytest.approx(0.5)


def test_without_min_time_benchmark_max_time_rules(tmp_path):
    out = tmp_path / "b.json"
    p = _run_pytest(tmp_path, "--benchmark-max-time", "0.2", f"--benchmark-json={out}")
    assert p.returncode == 0, p.stdout + p.stderr
    assert json.loads(out.read_text())["benchmarks"][0]["options"]["max_time"] == pytest.approx(0.2)


def test_negative_min_time_is_a_usage_error(tmp_path):
    p = _run_pytest(tmp_path, "--sb-min-time", "-1")
    assert p.returncode == 4 and "--sb-min-time must be >= 0, got -1" in p.stderr, p.stdout + p.stderr


def test_help_documents_measurement_options(tmp_path):
    p = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider",
                        "--rootdir", str(tmp_path), "--help"], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    text = " ".join(p.stdout.split())
    assert "--sb-min-time" in text and "Default: --benchmark-max-time (pytest-benchmark's, 1.0)" in text
    assert "--sb-energy-window" in text and "0 disables" in text


# -- record validity and parity facts (issue "Records that hold on every machine") ----------------
def _fake_variant(facts: dict | None = None, export=None, dtype: str = "float32"):
    from squeezebench.domain import ExportSpec

    return SimpleNamespace(facts=facts or {}, export=export or ExportSpec(dtype), arch={"dtype": dtype}, chain=[],
                           model=None)


def _fake_record(tmp_path, *, backend="onnxruntime", top1=98.5, parity=1.0, variant=None, runtime=None):
    from squeezebench.record import build_extra_info

    f = tmp_path / "model.onnx"
    f.write_bytes(b"x" * 10)
    case = SimpleNamespace(model="lenet300_100", dataset="mnist", variant="fp32", backend=backend, batch=1)
    artifact = SimpleNamespace(nbytes=10, files=[f], format="onnx")
    session = SimpleNamespace(facts=lambda: dict(runtime or {}), threads=1, device_name="cpu")
    ev = Evaluation(top1=top1, n_images=10000, parity_agreement=parity, max_abs_logit_diff=0.0)
    static = {"params": 1, "nonzero_params": 1, "macs": 1}
    return build_extra_info(case, variant or _fake_variant(), artifact, session, ev, static, 98.0, [1e-4, 2e-4],
                            extra={"top1_floor_rule": "floor for lenet300_100 on mnist"})


def test_every_record_holds_validity_and_parity_facts(tmp_path):
    from squeezebench.record import REQUIRED_FIELDS

    info = _fake_record(tmp_path)
    assert not [k for k in REQUIRED_FIELDS if info.get(k) is None]
    assert info["valid"] is True and info["invalid_reasons"] == []
    assert info["parity_min"] == 0.995 and info["parity_check"] == "cross-runtime: onnxruntime against torch"


def test_failed_guardrail_and_parity_make_an_invalid_record_naming_value_and_bound(tmp_path):
    info = _fake_record(tmp_path, top1=97.1, parity=0.9812)
    assert info["valid"] is False
    top1, parity = info["invalid_reasons"]
    assert top1 == "top-1 97.10% < floor 98.00% (floor for lenet300_100 on mnist)"
    assert parity.startswith("parity 98.12% < minimum 99.50%: onnxruntime top-1 predictions against the variant's")


def test_parity_minimum_and_reference_come_from_the_variant(tmp_path):
    from squeezebench.domain import ExportSpec, QuantSpec
    from squeezebench.record import ROUND_TRIP, parity_fields

    fp32 = _fake_variant()
    assert parity_fields("torch-cpu", fp32) == {
        "parity_min": 0.995, "parity_reference": "the variant's torch module in process (float32)",
        "parity_check": ROUND_TRIP}  # torch against its own module: no independent check
    assert parity_fields("openvino", fp32)["parity_check"] == "cross-runtime: openvino against torch"
    int8 = _fake_variant({"parity_min": 0.95, "quantization": {"reference": "fp32 model (each runtime calibrates itself)"}},
                         export=ExportSpec(quantization=QuantSpec("static", per_channel=True)))
    f = parity_fields("torch-cpu", int8)
    assert f["parity_min"] == 0.95 and f["parity_reference"].startswith("fp32 model (each runtime calibrates itself)")
    assert f["parity_check"].startswith("same runtime, another module")
    # 96 % passes a static int8 record's 95 % minimum, not the default 99.5 %
    assert _fake_record(tmp_path, parity=0.96, variant=int8)["valid"] is True
    assert _fake_record(tmp_path, parity=0.96)["valid"] is False


def test_parity_minimum_follows_the_precision_that_ran(tmp_path):
    """An f16 hint run in bf16 (OpenVINO on AVX512-BF16 CPUs) is held to the lower-precision minimum
    and says why; the same agreement fails a record that ran in the reference's precision."""
    fp16 = _fake_variant(dtype="float16")
    ran_bf16 = _fake_record(tmp_path, backend="openvino", parity=0.994, variant=fp16,
                            runtime={"inference_precision_effective": "bf16"})
    assert ran_bf16["valid"] is True and ran_bf16["parity_min"] == 0.99
    assert "computed in bf16 (8-bit mantissa), the reference in f16 (11-bit)" in ran_bf16["parity_min_reason"]
    ran_f16 = _fake_record(tmp_path, backend="openvino", parity=0.994, variant=fp16,
                           runtime={"inference_precision_effective": "f16"})
    assert ran_f16["valid"] is False and "parity_min_reason" not in ran_f16
    # a higher precision than the reference keeps the variant's minimum; so does a lower one already set lower
    assert "parity_min_reason" not in _fake_record(tmp_path, variant=fp16, runtime={"inference_precision_effective": "f32"})
    int8 = _fake_variant({"parity_min": 0.95})
    assert _fake_record(tmp_path, variant=int8, parity=0.96,
                        runtime={"inference_precision_effective": "bf16"})["parity_min"] == 0.95
    below = _fake_record(tmp_path, backend="openvino", parity=0.985, variant=fp16,
                         runtime={"inference_precision_effective": "bf16"})
    assert below["valid"] is False and "minimum 99.00%" in below["invalid_reasons"][0]


BACKSTOP_TESTS = '''
def test_guardrail(benchmark):
    benchmark(lambda: sum(range(50)))
    benchmark.extra_info.update(valid=True, invalid_reasons=[])
    top1, floor = 97.1, 98.0
    assert top1 >= floor, f"top-1 {top1:.2f}% < floor {floor:.2f}% (fp32 baseline 98.50% - allowed drop 0.50 pp)"

def test_crash_after_measuring(benchmark):
    benchmark(lambda: sum(range(50)))
    benchmark.extra_info.update(valid=True, invalid_reasons=[])
    raise RuntimeError("energy window broke\\nsecond line")

def test_reasons_already_recorded(benchmark):
    benchmark(lambda: sum(range(50)))
    reasons = ["parity 90.00% < minimum 95.00%: openvino"]
    benchmark.extra_info.update(valid=False, invalid_reasons=reasons)
    assert not reasons, "; ".join(reasons) + " (chain none)"

def test_passes(benchmark):
    benchmark(lambda: sum(range(50)))
    benchmark.extra_info.update(valid=True, invalid_reasons=[])
'''


def test_a_failed_benchmark_test_saves_its_record_as_invalid(tmp_path):
    """pytest-benchmark saves a failed test's record with its extra_info: the plugin marks it invalid."""
    (tmp_path / "test_x.py").write_text(BACKSTOP_TESTS)
    out = tmp_path / "b.json"
    cmd = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider",
           "--rootdir", str(tmp_path), "-q", str(tmp_path / "test_x.py"), "--benchmark-max-time=0.01",
           f"--benchmark-json={out}"]
    p = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert p.returncode == 1 and "3 failed, 1 passed" in p.stdout, p.stdout + p.stderr
    saved = {b["name"]: b["extra_info"] for b in json.loads(out.read_text())["benchmarks"]}
    assert saved["test_passes"] == {"valid": True, "invalid_reasons": []}
    g = saved["test_guardrail"]
    assert g["valid"] is False
    assert g["invalid_reasons"] == ["test failed: top-1 97.10% < floor 98.00% (fp32 baseline 98.50% - allowed drop 0.50 pp)"]
    c = saved["test_crash_after_measuring"]
    assert c["valid"] is False and c["invalid_reasons"] == ["test failed: energy window broke"]
    r = saved["test_reasons_already_recorded"]
    assert r == {"valid": False, "invalid_reasons": ["parity 90.00% < minimum 95.00%: openvino"]}  # not twice


def test_cpu_identity_from_proc_cpuinfo():
    from squeezebench.machine import KERNEL_FLAGS, kernel_flags, parse_cpuinfo

    text = ("processor\t: 0\nvendor_id\t: GenuineIntel\ncpu family\t: 6\nmodel\t\t: 143\n"
            "model name\t: Intel(R) Xeon(R) Platinum 8480+\nflags\t\t: fpu sse2 avx avx2 fma avx512f avx512bw "
            "avx512_vnni avx512_bf16 avx512_fp16 amx_tile amx_bf16 amx_int8 avx_vnni\n\n"
            "processor\t: 1\nvendor_id\t: GenuineIntel\ncpu family\t: 6\nmodel\t\t: 143\n")
    assert parse_cpuinfo(text) == {
        "cpu_vendor": "GenuineIntel", "cpu_family": 6, "cpu_model_id": 143,
        "cpu_isa": ["avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "avx512_fp16", "avx_vnni",
                    "amx_tile", "amx_bf16", "amx_int8"]}
    assert parse_cpuinfo("processor: 0\n")["cpu_isa"] is None  # no flag list: unknown, not "none"
    # py-cpuinfo's spelling drops the underscore: the same flags come back in Linux spelling and in
    # KERNEL_FLAGS order, whatever order they were given in (synthetic lists, not this CPU's)
    given = ["avx512vnni", "avx2", "avx512f"]
    got = kernel_flags(given)
    assert sorted(f.replace("_", "") for f in got) == sorted(given)
    assert got == sorted(got, key=KERNEL_FLAGS.index) and all(f in KERNEL_FLAGS for f in got)


@pytest.mark.parametrize("draw", [
    lambda g, n: g.lognormal(4.0, 0.3, n),             # right-skewed, like most latency rounds
    lambda g, n: 100 + g.exponential(5.0, n),          # a floor plus interruptions
    lambda g, n: g.normal(50.0, 2.0, n),
])
def test_median_interval_covers_the_true_median(draw):
    """At least ~95 % of intervals from samples of a known distribution contain its true median
    (drawn from 200k values), and they shrink as rounds grow."""
    from squeezebench.record import median_ci

    g = np.random.default_rng(0)
    true = float(np.median(draw(g, 200_000)))
    widths = {}
    for n in (12, 200):
        hits, w = 0, []
        for _ in range(2000):
            lo, hi = median_ci(draw(g, n))
            hits += lo <= true <= hi
            w.append(hi - lo)
        assert hits / 2000 >= 0.94, (n, hits)  # binomial sd of the share: 0.5 pp
        widths[n] = float(np.mean(w))
    assert widths[200] < widths[12] / 2


def test_latency_fields_carry_the_interval_and_cv_or_say_why_not():
    from squeezebench.record import latency_fields

    f = latency_fields([1e-4, 1.1e-4, 0.9e-4, 1e-4, 1.2e-4, 1e-4, 1.05e-4, 0.95e-4], batch=2)
    lo, hi = f["latency_p50_ci95_us"]
    assert lo <= f["per_image_us"] <= hi and lo >= 45.0 and hi <= 60.0
    assert 0 < f["latency_cv"] < 0.2 and f["latency_ci_method"].startswith("distribution-free 95 %")
    few = latency_fields([1e-4, 2e-4, 3e-4], batch=1)
    assert few["latency_p50_ci95_us"] is None and few["latency_ci_method"].startswith("unavailable: 3 rounds")


def test_latency_blocks_are_medians_of_consecutive_slices_in_time_order():
    from squeezebench.record import LATENCY_BLOCKS, latency_fields

    rounds = [1e-4] * 50 + [2e-4] * 50  # a step halfway through the run
    f = latency_fields(rounds, batch=1)
    blocks = f["latency_blocks_us"]
    assert len(blocks) == LATENCY_BLOCKS
    assert blocks[0] == pytest.approx(100.0) and blocks[-1] == pytest.approx(200.0)  # the drift stays visible
    assert blocks == sorted(blocks)
    few = latency_fields([1e-4, 3e-4, 2e-4], batch=2)
    assert few["latency_blocks_us"] == pytest.approx([50.0, 150.0, 100.0])  # one block per round


def test_a_wide_interval_is_measured_longer_then_flagged_unstable():
    from squeezebench.record import ci_rel_half_width, measure_until_stable

    rng = np.random.default_rng(0)
    rounds = list(1e-4 * rng.lognormal(0, 0.3, 8))  # 8 noisy rounds: a wide interval
    assert ci_rel_half_width(rounds) > 0.03
    f = measure_until_stable(rounds, lambda: float(1e-4 * rng.lognormal(0, 0.3)), budget_s=2.0)
    assert f["latency_stable"] and f["latency_extra_rounds"] == len(rounds) - 8 > 0
    assert f["latency_ci_rel_halfwidth"] <= 0.03 and f["latency_stability"].startswith("stable: median +-")

    steady = [1e-4] * 50
    f = measure_until_stable(steady, lambda: pytest.fail("a stable record needs no more rounds"), budget_s=2.0)
    assert f["latency_stable"] and f["latency_extra_rounds"] == 0

    wild = list(1e-4 * rng.lognormal(0, 2.0, 8))
    f = measure_until_stable(wild, lambda: float(1e-4 * rng.lognormal(0, 2.0)), budget_s=0.0)  # cap reached
    assert not f["latency_stable"] and f["latency_stability"].startswith("unstable: median +-")
