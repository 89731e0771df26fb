"""Latency statistics of a record against known samples, and --sb-min-time reaching pytest-benchmark."""
from __future__ import annotations

import json
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest

from squeezebench.record import benchmark_rounds, latency_fields


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
    cmd = [sys.executable, "-m", "pytest", "-p", "squeezebench.pytest_plugin", "-p", "no:cacheprovider",
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
    p = subprocess.run([sys.executable, "-m", "pytest", "-p", "squeezebench.pytest_plugin", "-p", "no:cacheprovider",
                        "--rootdir", str(tmp_path), "--help"], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    text = " ".join(p.stdout.split())
    assert "--sb-min-time" in text and "Default: --benchmark-max-time (pytest-benchmark's, 1.0)" in text
    assert "--sb-energy-window" in text and "0 disables" in text
