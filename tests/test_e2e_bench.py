"""One small real benchmark run, end to end, into a temporary storage dir."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from squeezebench.record import REQUIRED_FIELDS

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.e2e
@pytest.mark.slow
def test_bench_run_saves_complete_records(tmp_path, shared_data, pytestconfig):
    cache = pytestconfig.getoption("sb_cache_dir") or os.environ.get("SQUEEZEBENCH_CACHE_DIR")
    env = {**os.environ, "SQUEEZEBENCH_DATA_DIR": str(shared_data)}
    if cache:
        env["SQUEEZEBENCH_CACHE_DIR"] = str(cache)
    storage = tmp_path / "storage"
    cmd = [sys.executable, "-m", "pytest", "bench/", "-p", "no:cacheprovider", "--sb-profile", "quick",
           "-k", "lenet300_100", "--sb-variants", "fp32", "--sb-backends", "torch-cpu,torch-cuda,onnxruntime,openvino",
           "--benchmark-autosave", f"--benchmark-storage=file://{storage}",
           "--benchmark-max-time=0.05", "--benchmark-min-rounds=20", "--sb-warmup-time=0.02",
           "--sb-min-time=0", "--sb-energy-window=0.1"]
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1500)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    saved = list(storage.rglob("0001_*.json"))
    assert len(saved) == 1, f"expected one saved run under {storage}, got {saved}"
    run = json.loads(saved[0].read_text())

    sq = run["machine_info"]["squeezebench"]
    assert sq["cpu_model"] and sq["cpu_cores_available"] >= 1 and sq["libraries"]["torch"] != "not installed"
    assert "gpus" in sq

    records = {b["name"]: b for b in run["benchmarks"]}
    want = {f"test_variant[lenet300_100-mnist-fp32-{be}-b{b}]"
            for be in ("torch-cpu", "onnxruntime", "openvino") for b in (1, 256)}
    assert want <= set(records), f"missing records: {want - set(records)}"
    for name in want:
        info = records[name]["extra_info"]
        missing = [f for f in REQUIRED_FIELDS if info.get(f) is None]
        assert not missing, f"{name} lacks {missing}"
        assert info["top1"] >= 98.0, f"{name}: top-1 {info['top1']:.2f}% < floor 98.00%"
        assert info["parity_agreement"] >= 0.995
        assert info["per_image_us"] == pytest.approx(records[name]["stats"]["median"] / info["batch"] * 1e6)
        assert info["artifact_bytes"] == sum(info["artifact_files"].values()) > 4 * 266_000
        assert info["params"] == 266_610 and info["macs"] == 266_200
        assert info["threads"] >= 1
    # torch-cuda: recorded as a skip with its reason when there is no GPU, never as a failure.
    if not any("torch-cuda" in n for n in records):
        assert "no CUDA device" in r.stdout
