"""Histories from many machines: one storage folder per machine (the plugin), folders copied in
from several machines merged under one root or read from an fsspec URL, and the machines shown
side by side (``squeezebench machines``). Uses tests/data/history and tiny pytester projects."""
from __future__ import annotations

import copy
import json
import re
import uuid
from pathlib import Path

import pytest

from squeezebench.machine import KERNEL_FLAGS, default_machine_name, safe_machine_name
from squeezebench.reports.cli import main
from squeezebench.reports.history import UrlPath, cpu_isa, load_histories

DATA = Path(__file__).parent / "data" / "history"
HISTORY = next(DATA.rglob("0001_*.json"))
LEGACY = "Linux-CPython-3.11-64bit"  # pytest-benchmark's machine id: the same on every Linux box
SLOW_KEY = ("lenet5", "mnist", "fp32", "torch-cpu", 1)  # its newest run on lab-a is faster
ONLY_A = ("lenet300_100", "mnist", "kd-t8", "torch-cpu", 1)  # not measured on lab-b


def _key(b: dict) -> tuple:
    return tuple(b["extra_info"][k] for k in ("model", "dataset", "variant", "backend", "batch"))


def two_machines() -> dict[str, dict]:
    """{relative path: history}: lab-a with two runs, lab-b (twice as slow, no ONLY_A record)
    with one; both machines' first run is named 0001_a.json, as pytest-benchmark would name it."""
    base = json.loads(HISTORY.read_text())
    a1, a2, b1 = copy.deepcopy(base), copy.deepcopy(base), copy.deepcopy(base)
    for d, name, node, when in ((a1, "lab-a", "hosta", "2026-11-24T04:02:10"), (a2, "lab-a", "hosta", "2026-11-25T04:02:10"),
                                (b1, "lab-b", "hostb", "2026-11-24T05:00:00")):
        d["machine_info"]["squeezebench_machine"] = name
        d["machine_info"]["node"] = node
        d["datetime"] = when
    b1["machine_info"]["squeezebench"]["cpu_model"] = "Intel Xeon Gold 6430"
    b1["machine_info"]["squeezebench"]["cpu_isa"] = ["avx2", "fma", "avx512f", "avx512_vnni", "amx_tile", "amx_int8"]
    for b in b1["benchmarks"]:
        b["extra_info"]["per_image_us"] *= 2
        b["extra_info"]["latency_p50_ci95_us"] = [b["extra_info"]["per_image_us"] * 0.9,
                                                  b["extra_info"]["per_image_us"] * 1.1]
    b1["benchmarks"] = [b for b in b1["benchmarks"] if _key(b) != ONLY_A]
    for b in a2["benchmarks"]:
        if _key(b) == SLOW_KEY:
            b["extra_info"]["per_image_us"] /= 4
    return {f"{LEGACY}-lab-a/0001_a.json": a1, f"{LEGACY}-lab-a/0002_a.json": a2,
            f"{LEGACY}-lab-b/0001_a.json": b1}


def _rows(markdown: str, title: str) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the Markdown table under ``## title``."""
    lines = markdown.split(f"## {title}\n", 1)[1].strip("\n").splitlines()
    table = lines[:next((i for i, ln in enumerate(lines) if not ln.startswith("|")), len(lines))]
    cells = [[c.strip() for c in ln.strip("|").split(" | ")] for ln in table]
    return cells[0], cells[2:]


def _check_side_by_side(out: str) -> None:
    base = json.loads(HISTORY.read_text())
    cols, machines = _rows(out, "Machines")
    by_name = {r[0]: dict(zip(cols, r)) for r in machines}
    assert set(by_name) == {"lab-a", "lab-b"}
    assert by_name["lab-a"]["runs"] == "2" and by_name["lab-a"]["dates"] == "2026-11-24 .. 2026-11-25"
    assert by_name["lab-b"]["runs"] == "1" and by_name["lab-b"]["CPU"] == "Intel Xeon Gold 6430"
    # The column shows what each machine's record says its CPU had, no more: every recorded kernel
    # flag, and none of the flags the record lacks.
    for name, path in (("lab-a", f"{LEGACY}-lab-a/0001_a.json"), ("lab-b", f"{LEGACY}-lab-b/0001_a.json")):
        isa = cpu_isa(two_machines()[path]["machine_info"])
        if isa is None:
            assert by_name[name]["kernel flags"] == "not recorded"
            continue
        recorded = set(isa)
        shown = set(by_name[name]["kernel flags"].replace(":", " ").replace(",", " ").split())
        assert {f for f in KERNEL_FLAGS if f in recorded} <= shown, name
        assert not {f for f in KERNEL_FLAGS if f not in recorded} & shown, name

    cols, rows = _rows(out, "Machines side by side")
    table = {tuple(r[:5]): dict(zip(cols, r)) for r in rows}
    # nothing lost: every record of every machine has its row, each once
    assert len(rows) == len(table) == len({_key(b) for b in base["benchmarks"]})
    want = {tuple(str(x) for x in _key(b)): b["extra_info"] for b in base["benchmarks"]}
    for k, info in want.items():
        row = table[k]
        a_us = info["per_image_us"] / (4 if k == tuple(map(str, SLOW_KEY)) else 1)  # lab-a's newest run
        assert row["lab-a µs/image p50 [95% CI]"] == f"{a_us:.1f}"
        assert row["lab-a top-1 %"] == f"{info['top1']:.2f}"
        if k == tuple(map(str, ONLY_A)):
            assert row["lab-b µs/image p50 [95% CI]"] == row["lab-b top-1 %"] == row["lab-b / lab-a"] == "—"
            continue
        b_us = info["per_image_us"] * 2
        assert row["lab-b µs/image p50 [95% CI]"] == f"{b_us:.1f} [{b_us * 0.9:.1f}-{b_us * 1.1:.1f}]"
        assert row["lab-b / lab-a"] == f"{b_us / a_us:.2f}x"
    assert table[tuple(map(str, SLOW_KEY))]["lab-b / lab-a"] == "8.00x"


# -- reading many machines -------------------------------------------------------------------
def test_folders_copied_in_from_two_machines_merge_without_loss(tmp_path, capsys):
    root = tmp_path / "all-machines"
    for rel, d in two_machines().items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(json.dumps(d))
    assert main(["machines", str(root)]) == 0
    out = capsys.readouterr().out
    _check_side_by_side(out)
    # the same through a file:// URL (e.g. an NFS mount), and as two roots
    assert main(["machines", f"file://{root}"]) == 0
    assert capsys.readouterr().out == out
    assert main(["machines", str(root / f"{LEGACY}-lab-a"), str(root / f"{LEGACY}-lab-b")]) == 0
    _check_side_by_side(capsys.readouterr().out)


def test_histories_read_from_an_fsspec_url(capsys):
    fsspec = pytest.importorskip("fsspec")
    fs = fsspec.filesystem("memory")
    url = f"memory://sb-{uuid.uuid4().hex[:8]}/benchmarks"
    try:
        for rel, d in two_machines().items():
            fs.pipe(f"{url}/{rel}", json.dumps(d).encode())
        newest = load_histories([url])
        assert sorted(str(h.path) for h in newest) == [f"{url}/{LEGACY}-lab-a/0002_a.json",
                                                       f"{url}/{LEGACY}-lab-b/0001_a.json"]
        assert all(isinstance(h.path, UrlPath) for h in newest) and newest[0].path.name.endswith(".json")
        assert main(["machines", url]) == 0
        _check_side_by_side(capsys.readouterr().out)
        # a root that is not there is one named line, not a traceback; the others are still read
        assert main(["machines", url + "-missing", url]) == 0
        captured = capsys.readouterr()
        assert f"reports: skipped {url}-missing: no such file or directory" in captured.err
        assert "| lab-b |" in captured.out
        # reads only
        assert sorted(fs.find(url)) == sorted(f"{url}/{rel}".replace("memory://", "/") for rel in two_machines())
    finally:
        fs.rm(url.split("/benchmarks")[0], recursive=True)


def test_legacy_folders_of_the_same_name_stay_two_machines(tmp_path, capsys):
    """Before machine names, every Linux box saved into Linux-CPython-3.11-64bit/: two such
    folders copied in side by side are two machines, labelled by where they were put."""
    base = json.loads(HISTORY.read_text())
    slow = copy.deepcopy(base)
    for b in slow["benchmarks"]:
        b["extra_info"]["per_image_us"] *= 3
    for host, d in (("hosta", base), ("hostb", slow)):
        p = tmp_path / host / LEGACY / "0001_a.json"
        p.parent.mkdir(parents=True)
        p.write_text(json.dumps(d))
    assert main(["machines", str(tmp_path / "hosta"), str(tmp_path / "hostb")]) == 0
    out = capsys.readouterr().out
    names = [r[0] for r in _rows(out, "Machines")[1]]
    assert names == [f"hosta/{LEGACY}", f"hostb/{LEGACY}"]
    cols, rows = _rows(out, "Machines side by side")
    ratios = {r[cols.index(f"hostb/{LEGACY} / hosta/{LEGACY}")] for r in rows}
    assert ratios == {"3.00x"}
    # one legacy folder alone keeps its plain folder name
    assert main(["machines", str(tmp_path / "hosta")]) == 0
    assert [r[0] for r in _rows(capsys.readouterr().out, "Machines")[1]] == [LEGACY]


def test_report_has_machines_side_by_side_only_for_several_machines(tmp_path):
    from squeezebench.reports.render import _named_machines

    for rel, d in two_machines().items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(json.dumps(d))
    header, table = _named_machines(load_histories([tmp_path]))  # the report reads the newest per folder
    assert [r[0] for r in header.rows] == ["lab-a", "lab-b"] and [r[5] for r in header.rows] == ["1", "1"]
    assert "lab-b / lab-a" in table.columns and table.anchor == "side-by-side"
    assert _named_machines(load_histories([DATA])) == []


# -- the plugin: one storage folder per machine ------------------------------------------------
def test_machine_names_are_safe_and_stable():
    assert safe_machine_name("lab box/1") == "lab-box-1"
    assert safe_machine_name("//") == ""
    name = default_machine_name()
    assert re.fullmatch(r"[A-Za-z0-9._-]+-[0-9a-f]{6}", name) and name == default_machine_name()


BENCH = """
def test_tiny(benchmark):
    benchmark(lambda: None)
"""


def _run(pytester: pytest.Pytester, store: Path, *args: str):
    return pytester.runpytest_subprocess("-p", "no:cacheprovider", "--benchmark-autosave",
                                         f"--benchmark-storage={store}", "--benchmark-max-time=0.001",
                                         "--sb-cache-dir", str(pytester.path / "cache"), *args)


def test_storage_folder_is_per_machine_and_sb_machine_names_it(pytester: pytest.Pytester, monkeypatch):
    from pytest_benchmark.utils import get_machine_id

    monkeypatch.delenv("SQUEEZEBENCH_MACHINE", raising=False)
    pytester.makepyfile(test_bench=BENCH)
    store = pytester.path / "shared-store"
    r = _run(pytester, store)
    assert r.ret == 0, r.stdout.str()[-2000:]
    default = f"{get_machine_id()}-{default_machine_name()}"
    assert [p.name for p in store.iterdir()] == [default]
    saved = json.loads(next((store / default).glob("0001_*.json")).read_text())
    assert saved["machine_info"]["squeezebench_machine"] == default_machine_name()

    r = _run(pytester, store, "--sb-machine", "lab box/1")
    assert r.ret == 0, r.stdout.str()[-2000:]
    named = store / f"{get_machine_id()}-lab-box-1"
    assert json.loads(next(named.glob("0001_*.json")).read_text())["machine_info"]["squeezebench_machine"] == "lab-box-1"

    monkeypatch.setenv("SQUEEZEBENCH_MACHINE", "from-env")
    assert _run(pytester, store).ret == 0
    assert list((store / f"{get_machine_id()}-from-env").glob("0001_*.json"))
    monkeypatch.delenv("SQUEEZEBENCH_MACHINE")

    # --benchmark-compare finds this machine's previous run, in its own folder, and saves the next there
    r = _run(pytester, store, "--benchmark-compare")
    assert r.ret == 0, r.stdout.str()[-2000:]
    assert f"Comparing against benchmarks from: {default}/0001_" in r.stdout.str() + r.stderr.str()
    assert sorted(p.name[:4] for p in (store / default).glob("*.json")) == ["0001", "0002"]
    assert len(list(store.iterdir())) == 3  # no legacy Linux-CPython-3.11-64bit folder appeared

    r = _run(pytester, store, "--sb-machine", "//")
    assert r.ret == 4 and "has no letter or digit" in r.stderr.str()
