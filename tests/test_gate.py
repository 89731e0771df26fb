"""The latency gate's statistics on synthetic runs with known shifts, its tolerances per group,
pooling of interleaved runs, and the regression kinds beyond latency."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from squeezebench.config import GATE_KEYS, ConfigFileError, load_config
from squeezebench.reports.cli import main
from squeezebench.reports.compare import IMPROVED, REGRESSED, compare_runs
from squeezebench.reports.gate import (
    TOLERANCE_KEYS, GatePolicy, Tolerances, latency_test, machine_factor, pooled, record_id,
)
from squeezebench.reports.history import History, Record, load_history

MODELS = ("lenet5", "lenet300_100")
VARIANTS = ("fp32", "int8-static", "prune50")
BACKENDS = ("torch-cpu", "onnxruntime", "openvino")
BATCHES = (1, 256)
TARGET = ("lenet5", "mnist", "int8-static", "onnxruntime", 256)


def _keys():
    return [(m, "mnist", v, b, n) for m in MODELS for v in VARIANTS for b in BACKENDS for n in BATCHES]


def _run(rng: np.random.Generator, *, speed: float = 1.0, slow: dict | None = None, cv: float = 0.03,
         run_sd: float = 0.01, n_blocks: int = 20, extra: dict | None = None) -> History:
    """One synthetic run: each record's 20 block medians are lognormal around its true time times
    ``speed`` (the machine) times ``slow[key]`` (a planted change), with a per-run offset per record
    (``run_sd``: what blocks of one run cannot see) and block noise ``cv``."""
    records = []
    for i, k in enumerate(_keys()):
        m, d, v, b, n = k
        true = (10.0 + 3 * i) * (50 if n == 256 else 1)
        level = true * speed * (slow or {}).get(k, 1.0) * float(np.exp(rng.normal(0, run_sd)))
        blocks = level * np.exp(rng.normal(0, cv, n_blocks))
        info = {"schema": 2, "model": m, "dataset": d, "variant": v, "backend": b, "batch": n, "valid": True,
                "invalid_reasons": [], "top1": 98.0, "per_image_us": float(np.median(blocks)),
                "latency_blocks_us": [float(x) for x in blocks], "artifact_bytes": 1000 + i,
                "int8_share": 0.95 if "int8" in v else 0.0}
        info.update((extra or {}).get(k, {}))
        records.append(Record(info, f"test_variant[{m}-{d}-{v}-{b}-b{n}]", {}))
    h = History(Path("synthetic.json"), {"node": "x", "machine": "x86_64"}, {"id": "abc"}, "", records)
    for r in records:
        r.history = h
    return h


def _latency_verdicts(res) -> dict:
    return {c.record: c.verdict for c in res.changes if c.metric.startswith("latency")}


def test_identical_runs_pass_and_factor_is_one():
    rng = np.random.default_rng(1)
    a = _run(rng)
    res = compare_runs(a, a)
    assert not res.regressions and res.unchanged == len(_keys())
    assert "factor NEW/BASE = 1.000" in " ".join(res.notes)


def test_uniformly_slower_machine_passes_and_a_real_slowdown_on_it_is_still_caught():
    rng = np.random.default_rng(2)
    base, slower = _run(rng), _run(rng, speed=1.4)
    res = compare_runs(base, slower)
    assert not res.regressions, res.table().text()
    factor = float(" ".join(res.notes).split("factor NEW/BASE = ")[1].split()[0])
    assert factor == pytest.approx(1.4, rel=0.02)
    both = _run(rng, speed=1.4, slow={TARGET: 1.3})
    res = compare_runs(base, both)
    assert [c.record for c in res.regressions] == ["lenet5/mnist int8-static onnxruntime b256"]


def test_the_reference_record_is_gated_like_any_other():
    rng = np.random.default_rng(3)
    ref = ("lenet5", "mnist", "fp32", "torch-cpu", 1)
    res = compare_runs(_run(rng), _run(rng, slow={ref: 1.5}))
    assert [c.record for c in res.regressions] == ["lenet5/mnist fp32 torch-cpu b1"]
    assert res.regressions[0].metric == "latency (normalised, rank test)"


def test_faster_is_improved_not_regressed():
    rng = np.random.default_rng(4)
    res = compare_runs(_run(rng), _run(rng, slow={TARGET: 0.7}))
    assert _latency_verdicts(res) == {"lenet5/mnist int8-static onnxruntime b256": IMPROVED}


def test_significant_but_small_changes_stay_within_the_tolerance():
    rng = np.random.default_rng(5)
    base, new = _run(rng, cv=0.002, run_sd=0.0), _run(rng, cv=0.002, run_sd=0.0, slow={TARGET: 1.05})
    t = latency_test(base.by_key()[TARGET], new.by_key()[TARGET], 1.0)
    assert t.p_slower < 1e-6 and t.ratio == pytest.approx(1.05, abs=0.01)  # clearly significant...
    assert not compare_runs(base, new).regressions  # ...but 5 % is under the 10 % default
    assert compare_runs(base, new, latency_tol=0.03).regressions


def test_a_large_change_on_too_few_blocks_is_not_significant():
    rng = np.random.default_rng(6)
    base, new = _run(rng, n_blocks=5, cv=0.3), _run(rng, n_blocks=5, cv=0.3, slow={TARGET: 1.3})
    t = latency_test(base.by_key()[TARGET], new.by_key()[TARGET], 1.0)
    assert t.n_base == 5 and t.p_slower > 0.001


def test_power_and_false_alarms_on_simulated_noise():
    """On noise like this machine's quick-profile records (block CV 3 %, 1 % run-to-run per record):
    a 20 % slowdown is caught in every one of 50 runs, 10 % in most, and self-comparisons of 50 runs
    with different noise raise at most 2 alarms over all 36 records of all runs."""
    rng = np.random.default_rng(7)
    alarms = sum(len(compare_runs(_run(rng), _run(rng)).regressions) for _ in range(50))
    assert alarms <= 2
    for shift, need in ((1.2, 50), (1.15, 45)):
        caught = sum(any(c.record.endswith("onnxruntime b256") and "int8-static" in c.record and c.verdict == REGRESSED
                         for c in compare_runs(_run(rng), _run(rng, slow={TARGET: shift})).changes)
                     for _ in range(50))
        assert caught >= need, (shift, caught)


def test_machine_factor_needs_enough_records():
    rng = np.random.default_rng(8)
    h = _run(rng)
    pairs = [(r, r) for r in h.records[:3]]
    f = machine_factor(pairs)
    assert f.value == 1.0 and "not estimated: 3" in f.note


def test_pooling_joins_blocks_of_interleaved_runs_and_keeps_invalidity():
    rng = np.random.default_rng(9)
    a, b = _run(rng), _run(rng, extra={TARGET: {"valid": False, "invalid_reasons": ["parity 80% < 95%"]}})
    p = pooled([a, b])
    r = p.by_key()[TARGET]
    assert len(r["latency_blocks_us"]) == 40 and r["pooled_runs"] == 2
    assert r["per_image_us"] == pytest.approx(np.median(r["latency_blocks_us"]))
    assert r["valid"] is False and "parity 80% < 95%" in r["invalid_reasons"]
    assert len(p.records) == len(_keys())


def test_records_without_blocks_fall_back_to_the_in_run_ratio():
    rng = np.random.default_rng(10)
    strip = {k: {"latency_blocks_us": None} for k in _keys()}
    base, new = _run(rng, extra=strip), _run(rng, slow={TARGET: 1.5}, extra=strip)
    res = compare_runs(base, new)
    assert [c.metric for c in res.regressions] == ["latency / fp32 torch-cpu (same run)"]


# -- other regression kinds --------------------------------------------------------------------
def test_int8_share_dropping_regresses():
    rng = np.random.default_rng(11)
    res = compare_runs(_run(rng), _run(rng, extra={TARGET: {"int8_share": 0.4}}))
    (c,) = res.regressions
    assert c.metric == "int8 share of MACs" and c.base == "0.950" and c.new == "0.400"
    small = compare_runs(_run(rng), _run(rng, extra={TARGET: {"int8_share": 0.93}}))
    assert not small.regressions


@pytest.mark.parametrize("field", ["top1", "artifact_bytes", "int8_share", "per_image_us"])
def test_a_number_turning_unavailable_regresses(field):
    rng = np.random.default_rng(12)
    res = compare_runs(_run(rng), _run(rng, extra={TARGET: {field: "unavailable: counter not readable"}}))
    hit = [c for c in res.regressions if c.metric == field]
    assert hit and hit[0].new.startswith("unavailable"), res.table().text()


def test_a_record_turning_invalid_fails():
    rng = np.random.default_rng(13)
    res = compare_runs(_run(rng), _run(rng, extra={TARGET: {"valid": False, "invalid_reasons": ["top-1 low"]}}))
    assert res.failed() and [c.record for c in res.invalid] == ["lenet5/mnist int8-static onnxruntime b256"]


def test_latency_off_gates_no_time():
    rng = np.random.default_rng(14)
    res = compare_runs(_run(rng), _run(rng, slow={TARGET: 3.0}), latency="off")
    assert not res.regressions and "latency not gated" in " ".join(res.notes)


# -- tolerances in config ----------------------------------------------------------------------
def test_config_keys_are_the_tolerances():
    assert set(GATE_KEYS) == set(TOLERANCE_KEYS)


def _config(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "pyproject.toml"
    p.write_text("[tool.squeezebench.gate]\n" + text)
    return p


def test_group_tolerances_follow_globs_in_file_order(tmp_path):
    cfg = load_config(_config(tmp_path, 'latency-tol = 0.2\n'
                                        '[tool.squeezebench.gate.groups."*-b256"]\nlatency-tol = 0.05\n'
                                        '[tool.squeezebench.gate.groups."*-int8-static-*-b256"]\nlatency_tol = 0.08\n'
                                        'top1-tol = 1.0\n'))
    policy = GatePolicy.from_config(cfg.gate)
    assert policy.for_id("lenet5-mnist-fp32-onnxruntime-b1").latency_tol == 0.2
    assert policy.for_id("lenet5-mnist-fp32-onnxruntime-b256").latency_tol == 0.05
    t = policy.for_id("lenet5-mnist-int8-static-onnxruntime-b256")
    assert (t.latency_tol, t.top1_tol, t.size_tol) == (0.08, 1.0, Tolerances().size_tol)
    assert GatePolicy.from_config(cfg.gate, {"latency_tol": 0.5}).for_id("x-b256").latency_tol == 0.5  # option wins


def test_group_tolerance_decides_the_verdict(tmp_path):
    rng = np.random.default_rng(15)
    base, new = _run(rng), _run(rng, slow={TARGET: 1.2})
    loose = GatePolicy.from_config(load_config(_config(
        tmp_path, '[tool.squeezebench.gate.groups."*-onnxruntime-b256"]\nlatency-tol = 0.3\n')).gate)
    assert not compare_runs(base, new, policy=loose).regressions
    assert compare_runs(base, new).regressions  # default 10 %


@pytest.mark.parametrize("text,msg", [
    ("latency-tolerance = 0.1\n", "unknown key gate.latency-tolerance"),
    ('latency-tol = "10%"\n', "gate.latency-tol must be a number >= 0"),
    ("latency-alpha = 1.5\n", "must be in (0, 1)"),
    ('[tool.squeezebench.gate.groups."*-b1"]\nsize = 1\n', "unknown key gate.groups.'*-b1'.size"),
])
def test_bad_gate_config_is_refused_naming_the_key(tmp_path, text, msg):
    with pytest.raises(ConfigFileError, match=None) as e:
        load_config(_config(tmp_path, text))
    assert msg in str(e.value)


def test_cli_reads_the_gate_table_and_pools_comma_lists(tmp_path, capsys):
    rng = np.random.default_rng(16)

    def save(h: History, name: str) -> Path:
        d = {"machine_info": {"node": "x"}, "commit_info": {}, "datetime": "",
             "benchmarks": [{"name": r.name, "stats": {}, "extra_info": r.info} for r in h.records]}
        p = tmp_path / name
        p.write_text(json.dumps(d))
        return p

    a1, a2 = save(_run(rng), "a1.json"), save(_run(rng), "a2.json")
    b1, b2 = save(_run(rng, slow={TARGET: 1.2}), "b1.json"), save(_run(rng, slow={TARGET: 1.2}), "b2.json")
    assert load_history(a1).records[0]["latency_blocks_us"]
    rc = main(["compare", f"{a1},{a2}", f"{b1},{b2}", "--config", str(_config(tmp_path, ""))])
    out = capsys.readouterr().out
    assert rc == 1 and "40+40 blocks" in out
    cfg = _config(tmp_path, '[tool.squeezebench.gate.groups."*-b256"]\nlatency-tol = 0.5\n')
    assert main(["compare", f"{a1},{a2}", f"{b1},{b2}", "--config", str(cfg)]) == 0
    assert main(["compare", str(a1), str(b1), "--config", str(_config(tmp_path, "size-tol = -1\n"))]) == 2
    assert "size-tol must be a number >= 0" in capsys.readouterr().err


def test_test_id_comes_from_the_test_name_or_the_fields():
    rng = np.random.default_rng(17)
    r = _run(rng).records[0]
    assert record_id(r) == "lenet5-mnist-fp32-torch-cpu-b1"
    r.name = "test_other"
    assert record_id(r) == "lenet5-mnist-fp32-torch-cpu-b1"


# -- the A/B path end to end -------------------------------------------------------------------
@pytest.mark.e2e
def test_ab_path_end_to_end_catches_a_planted_slowdown_and_passes_itself(tmp_path):
    """Real runs of a tiny profile (synthetic image folder, one model, ONNX Runtime and torch):
    A, A again, and B with a 3x slowdown planted in one record through tests/planted.py; the gate
    passes A against A and fails B naming only the planted record."""
    pytest.importorskip("onnxruntime")
    from conftest import run_bench
    from test_options import _image_folder

    data = _image_folder(tmp_path / "imgs")
    tests_dir = Path(__file__).parent
    common = ("-p", "planted", "--sb-datasets", f"folder:{data}", "--sb-models", "lenet300_100",
              "--sb-variants", "fp32,int8-dynamic", "--sb-backends", "torch-cpu,onnxruntime", "--sb-batches", "1,4",
              "--sb-threads", "1", "--sb-min-time", "0.3", "--sb-warmup-time", "0.05", "--sb-energy-window", "0")
    runs = {}
    for name, plant in (("a1", ""), ("a2", ""), ("b", "*-fp32-onnxruntime-b4=2.0")):
        os.environ["SQUEEZEBENCH_PLANT"] = plant
        try:
            r, out = run_bench(*common, f"--benchmark-json={tmp_path / name}.json", tmp_path=tmp_path,
                               pythonpath=tests_dir)
        finally:
            del os.environ["SQUEEZEBENCH_PLANT"]
        assert r.returncode == 0, out[-3000:]
        runs[name] = tmp_path / f"{name}.json"
    planted_rec = [b for b in json.loads(runs["b"].read_text())["benchmarks"]
                   if b["extra_info"]["runtime"].get("planted_slowdown")]
    assert len(planted_rec) == 1 and planted_rec[0]["name"].endswith("-fp32-onnxruntime-b4]")
    cfg = _config(tmp_path, "")
    same = compare_runs(load_history(runs["a1"]), load_history(runs["a2"]),
                        policy=GatePolicy.from_config(load_config(cfg).gate, {"latency_tol": 0.5}))
    assert not same.regressions, same.table().text()
    res = compare_runs(load_history(runs["a1"]), load_history(runs["b"]),
                       policy=GatePolicy.from_config(load_config(cfg).gate, {"latency_tol": 0.5}))
    assert [(c.record.split()[-2:], c.metric) for c in res.regressions] == [
        (["onnxruntime", "b4"], "latency (normalised, rank test)")], res.table().text()


def test_trend_orders_runs_by_commit_and_marks_the_gates_verdicts(tmp_path, capsys):
    rng = np.random.default_rng(18)
    d = tmp_path / ".benchmarks" / "Linux-CPython-3.11-64bit"
    d.mkdir(parents=True)
    # saved out of commit order: run 0002 is the oldest commit
    for n, (when, slow) in enumerate([("2026-11-03", {TARGET: 1.5}), ("2026-11-01", None), ("2026-11-02", None)]):
        h = _run(rng, slow=slow)
        doc = {"machine_info": {"node": "x"}, "commit_info": {"id": f"c{n}" * 5, "time": when},
               "datetime": f"2026-11-29T10:0{n}", "benchmarks": [
                   {"name": r.name, "stats": {}, "extra_info": r.info} for r in h.records]}
        (d / f"{n + 1:04d}_run.json").write_text(json.dumps(doc))
    rc = main(["trend", str(tmp_path / ".benchmarks"), "--match", "lenet5-mnist-*-onnxruntime-b256",
               "--config", str(_config(tmp_path, "")), "-o", str(tmp_path / "out")])
    out = capsys.readouterr().out
    assert rc == 0, out
    header = next(line for line in out.splitlines() if line.startswith("record"))
    assert header.index("c1c1") < header.index("c2c2") < header.index("c0c0")  # commit order
    rows = {line.split()[0]: line for line in out.splitlines() if line.startswith("lenet5-")}
    assert set(rows) == {f"lenet5-mnist-{v}-onnxruntime-b256" for v in VARIANTS}
    assert rows["lenet5-mnist-int8-static-onnxruntime-b256"].rstrip().endswith("▲")
    assert "▲" not in rows["lenet5-mnist-fp32-onnxruntime-b256"]
    assert list((tmp_path / "out").glob("trend_*_per_image_us.png"))
    assert main(["trend", str(tmp_path / ".benchmarks"), "--metric", "speed", "--config",
                 str(_config(tmp_path, ""))]) == 2
