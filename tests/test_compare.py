"""python -m reports compare: direction-aware gates on planted regressions, and no false alarm
on a machine that is uniformly slower."""
from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path
from typing import Callable

import pytest

from squeezebench.reports.cli import main
from squeezebench.reports.compare import REGRESSED, compare_runs
from squeezebench.reports.history import load_history

HISTORY = next((Path(__file__).parent / "data" / "history").rglob("0001_*.json"))
BASE = json.loads(HISTORY.read_text())
INT8_ORT = ("lenet300_100", "mnist", "int8-static", "onnxruntime", 1)
PRUNE_CPU = ("lenet300_100", "mnist", "prune80", "torch-cpu", 1)


def key(info: dict) -> tuple:
    return tuple(info[k] for k in ("model", "dataset", "variant", "backend", "batch"))


def planted(tmp_path: Path, change: Callable[[dict], None], name: str = "0002_new.json") -> Path:
    """A copy of the committed history with ``change(extra_info)`` applied to every record."""
    d = copy.deepcopy(BASE)
    for b in d["benchmarks"]:
        change(b["extra_info"])
    p = tmp_path / name
    p.write_text(json.dumps(d))
    return p


def only(k: tuple, fn: Callable[[dict], None]) -> Callable[[dict], None]:
    return lambda e: fn(e) if key(e) == k else None


NO_GATE = Path(__file__).parent / "data" / "no_gate.toml"  # not this repo's [tool.squeezebench.gate]


def run(capsys, *args) -> tuple[int, str]:
    rc = main(["compare", *map(str, args), "--config", str(NO_GATE)])
    return rc, capsys.readouterr().out


def test_run_compared_with_itself_passes(capsys):
    rc, out = run(capsys, HISTORY, HISTORY)
    assert rc == 0, out
    assert "0 regressed" in out and "PASS" in out and REGRESSED not in out


@pytest.mark.parametrize("what,change,metric", [
    ("top-1 drop", only(INT8_ORT, lambda e: e.update(top1=e["top1"] - 1.0)), "top1 %"),
    ("artifact bigger", only(INT8_ORT, lambda e: e.update(artifact_bytes=e["artifact_bytes"] + 5000)), "artifact_bytes"),
    ("compressed bigger", only(PRUNE_CPU, lambda e: e.update(compressed_bytes=e["compressed_bytes"] * 1.1)),
     "compressed_bytes"),
    ("latency ratio up", only(INT8_ORT, lambda e: e.update(per_image_us=e["per_image_us"] * 1.6)), "latency / fp32"),
    ("energy up", only(PRUNE_CPU, lambda e: e.update(energy_cpu_j_per_image=e["energy_cpu_j_per_image"] * 1.5)),
     "energy_cpu_j_per_image"),
])
def test_planted_regression_fails(tmp_path, capsys, what, change, metric):
    rc, out = run(capsys, HISTORY, planted(tmp_path, change))
    assert rc == 1, f"{what} not caught:\n{out}"
    bad = [line for line in out.splitlines() if REGRESSED in line]
    assert len(bad) == 1 and metric in bad[0], out
    assert "FAIL" in out


def test_uniformly_slower_machine_is_no_regression(tmp_path, capsys):
    slow = planted(tmp_path, lambda e: e.update(per_image_us=e["per_image_us"] * 2))
    rc, out = run(capsys, HISTORY, slow)
    assert rc == 0, out
    assert "shown, not gated" in out and "+100.0%" in out  # absolute times are shown...
    assert REGRESSED not in out  # ...not judged
    rc, out = run(capsys, HISTORY, slow, "--gate-absolute")
    assert rc == 1 and REGRESSED in out  # unless asked to


def test_within_tolerance_and_improvements_pass(tmp_path, capsys):
    def better(e):
        if key(e) == INT8_ORT:
            e.update(top1=e["top1"] - 0.3, artifact_bytes=e["artifact_bytes"] - 100, per_image_us=e["per_image_us"] * 1.05)
        if key(e) == PRUNE_CPU:
            e.update(top1=e["top1"] + 0.5, energy_cpu_j_per_image=e["energy_cpu_j_per_image"] / 2)

    rc, out = run(capsys, HISTORY, planted(tmp_path, better))
    assert rc == 0, out
    assert "improved" in out and " ok" in out
    rc, out = run(capsys, HISTORY, planted(tmp_path, better), "--top1-tol", "0.2")
    assert rc == 1 and "top1 %" in [ln for ln in out.splitlines() if REGRESSED in ln][0]


def test_missing_records_fail_unless_allowed(tmp_path, capsys):
    d = copy.deepcopy(BASE)
    d["benchmarks"] = [b for b in d["benchmarks"] if key(b["extra_info"]) != INT8_ORT]
    new = tmp_path / "0002_missing.json"
    new.write_text(json.dumps(d))
    rc, out = run(capsys, HISTORY, new)
    assert rc == 1 and "MISSING in NEW" in out and "int8-static onnxruntime" in out
    rc, out = run(capsys, HISTORY, new, "--allow-missing")
    assert rc == 0 and "MISSING in NEW" in out and "(allowed)" in out
    rc, out = run(capsys, new, HISTORY)  # a record only NEW has is news, not a failure
    assert rc == 0 and "new in NEW" in out


def test_ratio_needs_the_baseline_in_both_runs(tmp_path, capsys):
    d = copy.deepcopy(BASE)
    fp32 = ("lenet300_100", "mnist", "fp32", "torch-cpu", 1)
    for b in d["benchmarks"]:
        if key(b["extra_info"]) == INT8_ORT:
            b["extra_info"]["per_image_us"] *= 3
    d["benchmarks"] = [b for b in d["benchmarks"] if key(b["extra_info"]) != fp32]
    new = tmp_path / "0002_nobase.json"
    new.write_text(json.dumps(d))
    res = compare_runs(load_history(HISTORY), load_history(new))
    judged = [c for c in res.changes if c.metric.startswith("latency /")]
    assert judged and all("not judged: no fp32 torch-cpu record in NEW" in c.verdict for c in judged)


def test_unreadable_history_exits_2_naming_it(tmp_path, capsys):
    bad = tmp_path / "0002_trunc.json"
    bad.write_text(HISTORY.read_text()[:2000])
    assert main(["compare", str(HISTORY), str(bad)]) == 2
    assert str(bad) in capsys.readouterr().err
    assert main(["compare", str(tmp_path / "gone.json"), str(HISTORY)]) == 2
    assert "gone.json: no such file" in capsys.readouterr().err


def test_exit_code_through_python_m(tmp_path):
    new = planted(tmp_path, only(INT8_ORT, lambda e: e.update(top1=e["top1"] - 2)))
    p = subprocess.run([sys.executable, "-m", "reports", "compare", str(HISTORY), str(new), "--quiet"],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 1, p.stdout + p.stderr
    assert "REGRESSED" in p.stdout and "lenet300_100/mnist int8-static onnxruntime b1" in p.stdout
    p = subprocess.run([sys.executable, "-m", "reports", "compare", str(HISTORY), str(HISTORY)],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stdout + p.stderr


def test_min_statistic_ignores_a_disturbed_median(tmp_path, capsys):
    """A neighbour's load doubles the fp32 torch-cpu median but not its fastest round."""
    fp32 = ("lenet300_100", "mnist", "fp32", "torch-cpu", 1)
    d = copy.deepcopy(BASE)
    for b in d["benchmarks"]:
        if key(b["extra_info"]) == fp32:
            b["extra_info"]["per_image_us"] *= 0.5  # every ratio against it doubles
    new = tmp_path / "0002_noisy.json"
    new.write_text(json.dumps(d))
    rc, out = run(capsys, HISTORY, new)
    assert rc == 1 and REGRESSED in out
    rc, out = run(capsys, HISTORY, new, "--latency-stat", "min")
    assert rc == 0, out
    # ...while a real slowdown of the fastest round is still caught
    for b in d["benchmarks"]:
        if key(b["extra_info"]) == INT8_ORT:
            b["stats"]["min"] *= 2
    new.write_text(json.dumps(d))
    rc, out = run(capsys, HISTORY, new, "--latency-stat", "min")
    assert rc == 1 and "min latency / fp32" in [ln for ln in out.splitlines() if REGRESSED in ln][0]


# -- invalid records: never a baseline, always a failure in NEW ------------------------------------
KD4 = ("lenet300_100", "mnist", "kd-t4", "torch-cpu", 1)
FP32_CPU = ("lenet300_100", "mnist", "fp32", "torch-cpu", 1)
KD4_REASON = "top-1 93.10% < floor 94.59% (fp32 baseline 98.59% - allowed drop 4.00 pp)"


def test_invalid_record_in_new_fails_the_gate_naming_it(tmp_path, capsys):
    # Same numbers as BASE: only the failed check differs, and that alone must fail.
    new = planted(tmp_path, only(KD4, lambda e: e.update(valid=False, invalid_reasons=[KD4_REASON])))
    rc, out = run(capsys, HISTORY, new, "--quiet")
    assert rc == 1, out
    assert f"INVALID in NEW: lenet300_100/mnist kd-t4 torch-cpu b1: {KD4_REASON}" in out
    assert "1 invalid in NEW" in out and "FAIL" in out and REGRESSED not in out


def test_old_record_failing_its_floor_in_new_is_invalid_by_inference(tmp_path, capsys):
    new = planted(tmp_path, only(KD4, lambda e: e.update(top1_floor=e["top1"] + 0.01)))  # no `valid` field
    rc, out = run(capsys, HISTORY, new)
    assert rc == 1 and "INVALID in NEW: lenet300_100/mnist kd-t4 torch-cpu b1: top-1 97.10% < floor 97.11%" in out
    assert "inferred" in out


def test_invalid_base_record_is_not_a_baseline(tmp_path, capsys):
    # A failed BASE run that looked better (higher top-1, faster, smaller) must not fail NEW.
    def failed_but_shiny(e):
        e.update(top1=e["top1"] + 1.5, per_image_us=e["per_image_us"] / 3, artifact_bytes=e["artifact_bytes"] // 2,
                 valid=False, invalid_reasons=["parity 90.00% < minimum 95.00%: onnxruntime"])

    base = planted(tmp_path, only(INT8_ORT, failed_but_shiny), name="0001_base.json")
    rc, out = run(capsys, base, HISTORY)
    assert rc == 0, out
    line = next(ln for ln in out.splitlines() if "int8-static onnxruntime" in ln)
    assert "BASE invalid: not a baseline" in line and "parity 90.00% < minimum 95.00%" in line
    assert REGRESSED not in out and "1 invalid in BASE (not baselines)" in out and "PASS" in out
    # missing from NEW too: still nothing to fail on
    d = json.loads(HISTORY.read_text())
    d["benchmarks"] = [b for b in d["benchmarks"] if key(b["extra_info"]) != INT8_ORT]
    (tmp_path / "0002_without.json").write_text(json.dumps(d))
    rc, out = run(capsys, base, tmp_path / "0002_without.json")
    assert rc == 0 and "MISSING in NEW" not in out, out


def test_latency_ratio_never_divides_by_an_invalid_fp32_record(tmp_path, capsys):
    # BASE's fp32 torch-cpu failed and ran 10x slow: every BASE ratio would look 10x better.
    base = planted(tmp_path, only(FP32_CPU, lambda e: e.update(
        per_image_us=e["per_image_us"] * 10, valid=False, invalid_reasons=["top-1 10.00% < floor 98.00%"])),
        name="0001_base.json")
    rc, out = run(capsys, base, HISTORY)
    assert rc == 0, out
    assert REGRESSED not in out
    assert "not judged: the fp32 torch-cpu record is invalid in BASE" in out
