"""Each record's metric across the saved runs of one machine, in commit order, with the gate's
verdict on each step (like asv's per-benchmark graphs): ``squeezebench trend``.

Runs are ordered by their commit's time (pytest-benchmark's ``commit_info.time``), then by when
they ran; each run is judged against the one before it by ``compare_runs`` with the gate's policy,
so a ▲ (regressed) or ▽ (improved) marks where the gate would have spoken.
"""
from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from pathlib import Path

from squeezebench.reports.compare import IMPROVED, INVALID, REGRESSED, compare_runs
from squeezebench.reports.gate import GatePolicy, record_id
from squeezebench.reports.history import History
from squeezebench.reports.tables import Table

MARK = {REGRESSED: "▲", IMPROVED: "▽", INVALID: "✗"}
METRICS = {"per_image_us": "median µs/image", "top1": "top-1 %", "artifact_bytes": "artifact bytes",
           "compressed_bytes": "compressed bytes", "int8_share": "int8 share of MACs",
           "energy_cpu_j_per_image": "CPU J/image", "energy_gpu_j_per_image": "GPU J/image"}
# Which compare metric names speak for a trend metric (a latency verdict marks per_image_us).
_VERDICT_METRICS = {"per_image_us": ("latency",), "top1": ("top1",), "artifact_bytes": ("artifact_bytes",),
                    "compressed_bytes": ("compressed_bytes",), "int8_share": ("int8 share", "int8_share"),
                    "energy_cpu_j_per_image": ("energy_cpu",), "energy_gpu_j_per_image": ("energy_gpu",)}


@dataclass
class Trend:
    runs: list[History]
    ids: list[str]  # record ids, sorted
    values: dict[str, list[float | None]]  # id -> value per run
    marks: dict[str, list[str]]  # id -> "" or the gate's verdict per run (vs the run before)
    metric: str


def commit_order(runs: list[History]) -> list[History]:
    def key(h: History):
        return (str((h.commit_info or {}).get("time") or ""), h.datetime, h.path.name)

    return sorted(runs, key=key)


def trend(runs: list[History], metric: str = "per_image_us", match: str = "*",
          policy: GatePolicy | None = None) -> Trend:
    """``runs`` of one machine (see history.group_by_machine); ``match`` is a glob over record ids."""
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; one of {', '.join(METRICS)}")
    runs = commit_order(runs)
    ids: dict[str, None] = {}
    for h in runs:
        for r in h.records:
            rid = record_id(r)
            if fnmatch.fnmatchcase(rid, match):
                ids.setdefault(rid, None)
    order = sorted(ids)
    values = {i: [None] * len(runs) for i in order}
    marks = {i: [""] * len(runs) for i in order}
    for j, h in enumerate(runs):
        by_id = {record_id(r): r for r in h.records}
        for i in order:
            if i in by_id:
                values[i][j] = by_id[i].n(metric)
        if j == 0:
            continue
        res = compare_runs(runs[j - 1], h, policy=policy)
        label_to_id = {r.label: record_id(r) for r in h.records}
        for c in res.changes:
            rid = label_to_id.get(c.record)
            if rid not in marks or c.verdict not in MARK:
                continue
            if c.verdict == INVALID or any(c.metric.startswith(m) for m in _VERDICT_METRICS[metric]):
                marks[rid][j] = c.verdict
    return Trend(runs, order, values, marks, metric)


def run_label(h: History) -> str:
    return f"{h.commit} {h.datetime[:16]}".strip()


def table(t: Trend) -> Table:
    cols = ["record"] + [run_label(h) for h in t.runs]
    rows = []
    for i in t.ids:
        cells = [i]
        for v, m in zip(t.values[i], t.marks[i]):
            cells.append(("—" if v is None else f"{v:.4g}") + (f" {MARK[m]}" if m else ""))
        rows.append(cells)
    return Table(f"{METRICS[t.metric]} by run, in commit order (▲ regressed, ▽ improved, ✗ invalid: the "
                 "gate's verdict against the run before)", cols, rows)


def plot(t: Trend, out: Path) -> Path:
    """One line per record over the runs, the gate's verdicts marked; PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.2 * len(t.runs)), 4.5))
    xs = list(range(len(t.runs)))
    for i in t.ids:
        pts = [(x, v) for x, v in zip(xs, t.values[i]) if v is not None]
        if not pts:
            continue
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", ms=3, label=i)
        for x, (v, m) in enumerate(zip(t.values[i], t.marks[i])):
            if m and v is not None:
                ax.plot([x], [v], marker="^" if m == REGRESSED else ("v" if m == IMPROVED else "x"), ms=11,
                        mfc="none", mec="red" if m != IMPROVED else "green", mew=2)
    ax.set_xticks(xs, [run_label(h) for h in t.runs], rotation=30, ha="right", fontsize=7)
    ax.set_ylabel(METRICS[t.metric])
    if t.metric == "per_image_us":
        ax.set_yscale("log")
    ax.set_title(f"{METRICS[t.metric]} by run (red ▲: the gate failed the step)")
    if len(t.ids) <= 12:
        ax.legend(fontsize=6, loc="best")
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out
