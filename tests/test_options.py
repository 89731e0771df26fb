"""Every ``--sb-*`` option does what its help says: selection options change what is collected,
measurement options change what is measured and recorded, location options change where."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]


def _pytest(*args: str, env: dict | None = None, cwd: Path = ROOT, timeout: int = 600) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "pytest", "bench/", "-p", "no:cacheprovider", *args]
    e = {k: v for k, v in os.environ.items() if k != "SQUEEZEBENCH_PROFILE"}
    return subprocess.run(cmd, cwd=cwd, env={**e, **(env or {})}, capture_output=True, text=True, timeout=timeout)


def _collected(*args: str, env: dict | None = None) -> set[str]:
    r = _pytest("--collect-only", "-q", *args, env=env)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    return {line.split("[", 1)[1].rstrip("]") for line in r.stdout.splitlines() if "::test_variant[" in line}


def test_selection_options_narrow_the_profile():
    quick = _collected("--sb-profile", "quick")
    assert len(quick) == 2 * 4 * 4 * 2 and all("-mnist-" in i for i in quick)
    assert _collected(env={"SQUEEZEBENCH_PROFILE": "quick"}) == quick  # the environment names the profile too
    assert _collected("--sb-profile", "quick", "--sb-models", "lenet5") == {i for i in quick if i.startswith("lenet5-")}
    assert _collected("--sb-profile", "quick", "--sb-variants", "fp32,kd-t4") == {
        i for i in quick if "-fp32-" in i or "-kd-t4-" in i}
    assert _collected("--sb-profile", "quick", "--sb-backends", "onnxruntime") == {
        i for i in quick if "-onnxruntime-" in i}
    assert _collected("--sb-profile", "quick", "--sb-batches", "7,9") == {
        i.replace("-b1", "-b7") for i in quick if i.endswith("-b1")} | {
        i.replace("-b1", "-b9") for i in quick if i.endswith("-b1")}
    ds = _collected("--sb-profile", "quick", "--sb-datasets", "cifar10", "--sb-variants", "fp32")
    assert ds and all("-cifar10-fp32-" in i for i in ds)


def _image_folder(root: Path, classes: int = 3, per_class: int = 6, size: int = 8) -> Path:
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for c in range(classes):
            d = root / split / f"class{c}"
            d.mkdir(parents=True)
            for i in range(per_class):
                arr = rng.integers(0, 40, (size, size), dtype=np.uint8)
                arr[c * 2:(c + 1) * 2] = 250  # learnable: a bright band per class
                Image.fromarray(arr, "L").save(d / f"{i}.png")
    return root


@pytest.mark.e2e
def test_measurement_and_location_options_reach_the_record(tmp_path):
    """One real run on a tiny image folder: threads, warm-up, timed seconds, energy window,
    cache and data locations are what the options said, as recorded."""
    data = _image_folder(tmp_path / "imgs")
    before = {p: p.stat().st_mtime_ns for p in data.rglob("*")}
    cache, out = tmp_path / "cache", tmp_path / "run.json"
    r = _pytest("--sb-datasets", f"folder:{data}", "--sb-models", "lenet300_100", "--sb-variants", "fp32",
                "--sb-backends", "torch-cpu,onnxruntime", "--sb-batches", "2",
                "--sb-cache-dir", str(cache), "--sb-data-dir", str(tmp_path / "unused-data"),
                "--sb-threads", "1", "--sb-warmup-time", "0.3", "--sb-min-time", "0.2", "--sb-energy-window", "0.4",
                f"--benchmark-json={out}", env={"SQUEEZEBENCH_CACHE_DIR": str(tmp_path / "not-this-one")})
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    run = json.loads(out.read_text())
    assert run["machine_info"]["squeezebench"]["threads"] == 1
    assert len(run["benchmarks"]) == 2
    for b in run["benchmarks"]:
        info = b["extra_info"]
        assert info["batch"] == 2 and info["threads"] == 1
        assert info["warmup_s"] >= 0.3 and info["warmup_calls"] >= 3
        assert b["options"]["max_time"] == pytest.approx(0.2) and info["latency_max_time_s"] == pytest.approx(0.2)
        if info["energy_cpu_j_per_image"].startswith("unavailable"):  # no RAPL here: memory calls only
            assert info["energy_calls"] >= 3 and "--sb-energy-window 0.4 s applies" in info["energy_window_method"]
        else:
            assert info["energy_window_s"] >= 0.4 and info["energy_window_min_s"] >= 0.4
    assert (cache / "trained").is_dir() and (cache / "datasets").is_dir(), "--sb-cache-dir is where caches go"
    assert not (tmp_path / "not-this-one").exists(), "the option wins over the environment"
    assert not (tmp_path / "unused-data").exists(), "a named data directory is never created or written"
    assert {p: p.stat().st_mtime_ns for p in data.rglob("*")} == before, "the data folder is only read"
    trained = json.loads(next((cache / "trained").glob("*/MANIFEST.json")).read_text())
    assert trained["key_parts"]["train_threads"] == 1, "--sb-threads pins training too"
