"""python -m reports: reading histories (and refusing bad ones by name), the study's tables,
"is this compression real?", plots, Markdown and HTML reports. Uses tests/data/history only."""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from reports import paper
from reports.analysis import compression_reality, latency_ratio, pareto_front
from reports.cli import main
from reports.history import HistoryError, expand_paths, load_histories, load_history

DATA = Path(__file__).parent / "data" / "history"
HISTORY = next(DATA.rglob("0001_*.json"))


@pytest.fixture(scope="module")
def history():
    return load_history(HISTORY)


def _write(path: Path, data) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data) if not isinstance(data, str) else data)
    return path


def other_machine(tmp_path: Path) -> Path:
    """The committed history as if run on another machine (a GPU box, twice as slow on the CPU)."""
    d = json.loads(HISTORY.read_text())
    d["machine_info"]["node"] = "gpubox"
    d["machine_info"]["squeezebench"]["cpu_model"] = "Intel Xeon"
    d["machine_info"]["squeezebench"]["gpus"] = ["NVIDIA H100"]
    for b in d["benchmarks"]:
        b["extra_info"]["per_image_us"] *= 2
    return _write(tmp_path / "gpubox" / "Linux-CPython-3.11-64bit" / "0001_x.json", d)


# -- reading ---------------------------------------------------------------------------------
def test_committed_history_is_small_and_realistic(history):
    assert HISTORY.stat().st_size < 100_000
    assert len(history.records) >= 10
    assert {r["backend"] for r in history.records} >= {"torch-cpu", "onnxruntime"}
    assert history.machine.facts["cpu"] and history.commit.startswith("0123456789")


def test_truncated_file_is_named(tmp_path):
    bad = _write(tmp_path / "0002_trunc.json", HISTORY.read_text()[:5000])
    with pytest.raises(HistoryError, match=re.escape(str(bad)) + ".*truncated JSON"):
        load_history(bad)


def test_foreign_json_is_named(tmp_path):
    for name, data in (("list.json", [1, 2]), ("obj.json", {"hello": "world"}),
                       ("nomachine.json", {"benchmarks": []})):
        with pytest.raises(HistoryError, match=re.escape(name) + ".*not a pytest-benchmark history"):
            load_history(_write(tmp_path / name, data))
    plain = {"machine_info": {"node": "x"}, "benchmarks": [{"name": "test_foo", "extra_info": {}}]}
    with pytest.raises(HistoryError, match="no squeezebench records"):
        load_history(_write(tmp_path / "plain.json", plain))


def test_missing_and_empty_files_are_named(tmp_path):
    with pytest.raises(HistoryError, match=r"nope\.json: no such file"):
        load_history(tmp_path / "nope.json")
    with pytest.raises(HistoryError, match="empty file"):
        load_history(_write(tmp_path / "empty.json", ""))


def test_bad_files_are_reported_and_the_others_still_read(tmp_path, capsys):
    trunc = _write(tmp_path / "0002_t.json", HISTORY.read_text()[:-300])
    foreign = _write(tmp_path / "foreign.json", {"a": 1})
    hs = load_histories([trunc, HISTORY, foreign, tmp_path / "missing.json"])
    assert [h.path for h in hs] == [HISTORY]
    err = capsys.readouterr().err
    for p in (trunc, foreign, tmp_path / "missing.json"):
        assert str(p) in err


def test_directory_gives_newest_history_per_machine(tmp_path):
    for n in ("0001_a.json", "0003_c.json", "0002_b.json"):
        _write(tmp_path / "m1" / n, "{}")
    _write(tmp_path / "m2" / "0001_z.json", "{}")
    _write(tmp_path / "m2" / "notes.json", "{}")
    assert [p.name for p in expand_paths([tmp_path])] == ["0003_c.json", "0001_z.json"]
    assert len(expand_paths([tmp_path], every=True)) == 4


# -- analysis ----------------------------------------------------------------------------------
def test_latency_ratio_is_within_the_run(history):
    by = history.by_key()
    rec = by[("lenet300_100", "mnist", "int8-static", "onnxruntime", 1)]
    base = by[("lenet300_100", "mnist", "fp32", "torch-cpu", 1)]
    assert latency_ratio(rec, history.records) == pytest.approx(rec["per_image_us"] / base["per_image_us"])


def test_compression_reality_flags_sparsity_without_speedup(history):
    got = {(x.record["variant"], x.record["backend"]): x for x in compression_reality(history.records)}
    prune = got[("prune80", "torch-cpu")]
    assert prune.nonzero_reduction == pytest.approx(266610 / 53410)
    assert prune.speedup < 1.05 and "dense kernels ignore zeros" in prune.flag
    assert got[("int8-static", "onnxruntime")].flag == ""
    assert got[("int8-static", "onnxruntime")].speedup > 1.5
    # compared on the same backend: the onnxruntime variant against onnxruntime fp32
    assert got[("prune80", "onnxruntime")].baseline["backend"] == "onnxruntime"


def test_pareto_front():
    pts = [(100, 90.0), (50, 95.0), (200, 96.0), (60, 94.0), (300, 96.0)]
    assert pareto_front(pts) == [1, 2]


# -- the study's tables ------------------------------------------------------------------------
def test_study_data_is_in_the_project_with_its_source():
    readme = (paper.DATA / "README.md").read_text()
    assert "study" in readme and "not ours" in readme.lower() or "never our measurements" in readme
    rows = paper.study_rows()
    assert {int(r["table"]) for r in rows} | {int(r["table"]) for r in paper.study_params()} == set(range(1, 21))
    ref = Path(__file__).resolve().parents[2] / "shared" / "reference" / "study-tables.csv"
    if ref.exists():  # byte-identical copy where the reference folder is at hand
        assert ref.read_bytes() == (paper.DATA / "study_tables.csv").read_bytes()


def test_study_rows_missing_a_field_keep_their_note():
    rows = {(r["table"], r["setting"], r["precision"], r["model"]): r for r in paper.study_rows()}
    r = rows[("13", "sparsity50", "int8", "lenet300_100")]
    assert r["note"].startswith("the source shows one time") and r["epochs"] == ""
    assert all(r["note"] is not None for r in rows.values())


@pytest.mark.parametrize("table,setting,precision,model,expected", [
    (3, "sparsity80", "fp32", "lenet300_100", ("lenet300_100", "mnist", "prune80")),
    (13, "sparsity80", "int8", "lenet300_100", ("lenet300_100", "mnist", f"prune80+{paper.QUANT_TOKEN}")),
    (1, "original", "fp16", "lenet300_100", ("lenet300_100", "mnist", "fp16")),
    (5, "dense+conv", "fp32", "lenet5", ("lenet5", "mnist", "sprune75-conv")),
    (14, "dense", "int8", "lenet5", ("lenet5", "mnist", f"sprune50-dense+{paper.QUANT_TOKEN}")),
    (11, "from_lenet5", "fp32", "mlp_student", ("lenet5", "mnist", "kd-t4")),
    (17, "from_lenet300_100", "int8", "mlp_student", ("lenet300_100", "mnist", f"kd-t4+{paper.QUANT_TOKEN}")),
    (11, "scratch", "fp32", "mlp_student", ("*", "mnist", "scratch-mlp_student")),
    (11, "teacher", "fp32", "lenet5", ("lenet5", "mnist", "fp32")),
])
def test_study_rows_map_to_variant_ids(table, setting, precision, model, expected):
    row = next(r for r in paper.study_rows() if int(r["table"]) == table and r["setting"] == setting
               and r["precision"] == precision and r["model"] == model and r["dataset"] == "mnist")
    assert paper.our_key(row) == expected


def test_every_study_row_maps():
    for r in paper.study_rows():
        if int(r["table"]) <= 18:
            paper.our_key(r)
        else:
            src, how = paper.resolve_best(r, paper.study_rows())
            assert src is not None, (r, how)


def test_best_rows_are_found_by_value():
    rows = paper.study_rows()
    best = next(r for r in rows if r["table"] == "19" and r["setting"] == "pruning" and r["model"] == "lenet5"
                and r["dataset"] == "mnist")
    src, how = paper.resolve_best(best, rows)
    assert (src["table"], src["setting"]) == ("5", "dense+conv") and "with this value" in how
    t20 = next(r for r in rows if r["table"] == "20" and r["setting"] == "original" and r["model"] == "lenet300_100"
               and r["dataset"] == "mnist")  # 1.31E-04: no original row has it (the study's own inconsistency)
    src, how = paper.resolve_best(t20, rows)
    assert paper.our_key(src)[2] == "fp32" and "no study row has this value" in how


def _row(table, col: int, value: str) -> list[str]:
    return next(r for r in table.rows if r[col] == value)


def test_paper_tables_put_ours_beside_the_study(history):
    tables = {int(t.title.split(".")[0].split()[1]): t for t in paper.paper_tables(history)}
    assert sorted(tables) == list(range(1, 21))
    t3 = tables[3]
    cols = t3.columns
    r80 = _row(t3, 2, "sparsity80")
    assert r80[cols.index("top-1 % ours")] == "98.31"
    assert r80[cols.index("top-1 % study")] == "97.62"
    assert r80[cols.index("size kB study")] == "191"
    assert r80[cols.index("size kB ours (file)")] == "262.0 (compressed)"
    assert r80[cols.index("s/image study Config1")] == "6.60E-05"
    ours_t = r80[cols.index("s/image ours (torch-cpu b1)")]
    assert ours_t == f"{history.by_key()[('lenet300_100', 'mnist', 'prune80', 'torch-cpu', 1)]['per_image_us'] / 1e6:.2E}"
    r50 = _row(t3, 2, "sparsity50")
    assert r50[cols.index("top-1 % ours")] == "not in this history"
    assert r50[cols.index("top-1 % study")] == "98.09"  # the study's figure is still shown, labelled as the study's
    # cifar10 rows: nothing of ours, never the study's number in our columns
    t7 = tables[7]
    for row in t7.rows:
        assert row[t7.columns.index("top-1 % ours")] == "not in this history"
    # per-layer counts (Table 4): ours from nonzero_per_layer, the study's beside
    r4 = _row(tables[4], 0, "sparsity80")
    assert r4[tables[4].columns.index("fc1 ours / study")] == "47040 / 47040"
    assert r4[tables[4].columns.index("fc2 ours / study")] == "6000 / 1200"
    # distillation: the student of lenet300_100 is our lenet300_100 kd-t4 record
    r11 = _row(tables[11], 2, "from_lenet300_100")
    assert r11[4] == "kd-t4 (lenet300_100)" and r11[tables[11].columns.index("top-1 % ours")] == "97.10"


def test_int8_rows_fall_back_to_another_int8_scheme_and_say_so(history):
    assert paper.QUANT_TOKEN == "int8-static"  # what the project's paper profile runs
    t13 = next(t for t in paper.paper_tables(history, tables=[13]))
    row = next(r for r in t13.rows if r[2] == "sparsity80" and r[3] == "int8")
    assert row[4] == "prune80+int8-qat (lenet300_100)"  # the history only has the QAT chain
    assert row[t13.columns.index("top-1 % ours")] == "98.20"
    row = next(r for r in t13.rows if r[2] == "original" and r[3] == "int8")
    assert row[4] == "int8-static (lenet300_100)"


def test_project_rows_without_a_study_row_are_marked(history):
    t5 = paper.paper_tables(history, tables=[5])[0]
    extra = [r for r in t5.rows if r[2] == paper.ONLY_OURS]
    assert [r[4] for r in extra] == ["sprune50-conv (lenet5)"]
    assert extra[0][t5.columns.index("top-1 % study")] == "—"
    t6 = paper.paper_tables(history, tables=[6])[0]
    pruned = next(r for r in t6.rows if r[0] == "pruned")
    assert pruned[t6.columns.index("conv2 ours / study")] == "204 / 604"  # 4x2x5x5 + 4 biases (study counts biases)


def test_paper_cli_markdown(tmp_path, capsys):
    assert main(["paper", str(HISTORY), "--tables", "3,19", "-o", str(tmp_path / "p.md")]) == 0
    md = (tmp_path / "p.md").read_text()
    assert "## Table 3. Pruning LeNet-300-100 on MNIST" in md and "## Table 19." in md and "Table 4." not in md
    assert "reference only, not our measurements" in md
    assert "| mnist | lenet300_100 | sparsity80 | fp32 | prune80 (lenet300_100) | 98.31 | 97.62 |" in md


def test_paper_refuses_a_broken_history(tmp_path, capsys):
    bad = _write(tmp_path / "0001_bad.json", "{\"benchmarks\": [")
    assert main(["paper", str(bad)]) == 2
    assert str(bad) in capsys.readouterr().err


# -- plots and reports -------------------------------------------------------------------------
def test_plots_png_and_svg(tmp_path, capsys):
    assert main(["plots", str(HISTORY), "-o", str(tmp_path)]) == 0
    names = {p.name for p in tmp_path.iterdir()}
    for stem in ("pareto_lenet300_100_mnist", "pareto_lenet5_mnist", "latency_lenet300_100_mnist_b1",
                 "sparsity_lenet300_100_mnist", "temperature_mnist", "energy_lenet300_100_mnist_b1"):
        assert {f"{stem}.png", f"{stem}.svg"} <= names, stem
    assert (tmp_path / "pareto_lenet300_100_mnist.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "<svg" in (tmp_path / "pareto_lenet300_100_mnist.svg").read_text()[:1000]


def test_html_report_is_self_contained_and_side_by_side(tmp_path, capsys):
    other = other_machine(tmp_path)
    broken = _write(tmp_path / "0009_broken.json", HISTORY.read_text()[:1000])
    out = tmp_path / "out"
    assert main(["html", str(HISTORY), str(other), str(broken), "-o", str(out)]) == 0
    err = capsys.readouterr().err
    assert str(broken) in err and "truncated" in err
    doc = (out / "report.html").read_text()
    srcs = re.findall(r'src="([^"]*)"', doc)
    assert srcs and all(s.startswith("data:image/png;base64,") for s in srcs)
    assert "<link" not in doc and "<script src" not in doc
    assert "Is this compression real?" in doc and "dense kernels ignore zeros" in doc
    # two machines, side by side
    assert "M1: vm (AMD EPYC)" in doc and "M2: gpubox (Intel Xeon; NVIDIA H100)" in doc
    assert "M1 top-1 %" in doc and "M2 top-1 %" in doc
    assert "Table 3. Pruning LeNet-300-100 on MNIST" in doc


def test_markdown_report_links_its_plots(tmp_path, capsys):
    out = tmp_path / "md"
    assert main(["markdown", str(HISTORY), "-o", str(out)]) == 0
    md = (out / "report.md").read_text()
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md)
    assert links and all((out / link).is_file() for link in links)
    assert "## Is this compression real?" in md and "## Machines" in md
    assert "| lenet300_100 | mnist | prune80 | torch-cpu | 1 |" in md


def test_report_with_no_readable_history_fails_clearly(tmp_path, capsys):
    assert main(["html", str(tmp_path / "none.json"), "-o", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "none.json: no such file" in err and "no readable history" in err


def test_help_lists_the_views():
    p = subprocess.run([sys.executable, "-m", "reports", "--help"], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0
    for view in ("summary", "paper", "plots", "markdown", "html", "compare"):
        assert re.search(rf"^\s+{view}\s", p.stdout, re.M), view
