"""Figures from records (matplotlib, Agg): each saved as PNG and SVG.

- accuracy vs bytes, Pareto front, per model and dataset;
- per-image latency per backend and variant;
- sparsity vs accuracy;
- distillation temperature vs student accuracy (variants kd-tN);
- energy per image where measured.
"""
from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from squeezebench.reports.analysis import distill_temperature, pareto_front, technique_family  # noqa: E402
from squeezebench.reports.history import Record  # noqa: E402

SIZE_BACKEND = "torch-cpu"  # whose artifact_bytes stand for a variant's size when no compressed_bytes


@dataclass
class Plot:
    name: str
    title: str
    png: Path
    svg: Path | None
    caption: str


def _slug(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", s).strip("_")


FORMATS = ("png", "svg")
_formats = list(FORMATS)  # set by all_plots for one call


def _save(fig, out: Path, name: str, title: str, caption: str) -> Plot:
    out.mkdir(parents=True, exist_ok=True)
    png, svg = out / f"{name}.png", out / f"{name}.svg"
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    if "svg" in _formats:
        fig.savefig(svg)
    plt.close(fig)
    return Plot(name, title, png, svg if "svg" in _formats else None, caption)


def _pairs(records: list[Record]) -> dict[tuple[str, str], list[Record]]:
    g: dict[tuple[str, str], list[Record]] = defaultdict(list)
    for r in records:
        g[(r["model"], r["dataset"])].append(r)
    return dict(sorted(g.items()))


def _one_per_variant(recs: list[Record]) -> list[Record]:
    """One record per variant for backend-independent views: torch-cpu at the smallest batch
    where present, else the first backend."""
    best: dict[str, Record] = {}
    for r in sorted(recs, key=lambda r: (r["backend"] != SIZE_BACKEND, r["batch"], r["backend"])):
        best.setdefault(r["variant"], r)
    return list(best.values())


def pareto_plots(records: list[Record], out: Path, prefix: str = "") -> list[Plot]:
    plots = []
    for (model, dataset), recs in _pairs(records).items():
        pts = [(r, *r.size()) for r in _one_per_variant(recs)]
        pts = [(r, s, f) for r, s, f in pts if s is not None and r.n("top1") is not None]
        if not pts:
            continue
        fields = {f for _, _, f in pts}
        xlabel = ("compressed_bytes (kB)" if fields == {"compressed_bytes"} else
                  "artifact_bytes (kB, torch-cpu artifact; compressed_bytes not recorded)" if fields == {"artifact_bytes"}
                  else "compressed_bytes (kB), else artifact_bytes (hollow markers)")
        fig, ax = plt.subplots(figsize=(7, 4.5))
        fams = sorted({technique_family(r["variant"]) for r, _, _ in pts})
        colors = {f: plt.cm.tab10(i % 10) for i, f in enumerate(fams)}
        for r, s, f in pts:
            fam = technique_family(r["variant"])
            ax.scatter(s / 1000, r.n("top1"), color=colors[fam], s=36,
                       facecolors="none" if f == "artifact_bytes" and len(fields) > 1 else colors[fam],
                       label=fam)
            ax.annotate(r["variant"], (s / 1000, r.n("top1")), fontsize=7, xytext=(3, 3), textcoords="offset points")
        front = pareto_front([(s, r.n("top1")) for r, s, _ in pts])
        fx = [pts[i][1] / 1000 for i in front]
        fy = [pts[i][0].n("top1") for i in front]
        ax.step(fx, fy, where="post", color="black", lw=1, alpha=0.6, label="Pareto front")
        ax.set_xscale("log")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("top-1 accuracy (%)")
        title = f"Accuracy vs size: {model} on {dataset}"
        ax.set_title(title)
        h, lbl = ax.get_legend_handles_labels()
        uniq = dict(zip(lbl, h))
        ax.legend(uniq.values(), uniq.keys(), fontsize=7, loc="lower right")
        ax.grid(alpha=0.3)
        plots.append(_save(fig, out, f"{prefix}pareto_{_slug(model)}_{_slug(dataset)}", title,
                           f"One point per variant; x = {xlabel}. Black: variants no other beats on both size and top-1."))
    return plots


def latency_plots(records: list[Record], out: Path, prefix: str = "") -> list[Plot]:
    plots = []
    groups: dict[tuple, list[Record]] = defaultdict(list)
    for r in records:
        if r.n("per_image_us") is not None:
            groups[(r["model"], r["dataset"], r["batch"])].append(r)
    for (model, dataset, batch), recs in sorted(groups.items()):
        variants = sorted({r["variant"] for r in recs}, key=lambda v: (v != "fp32", v))
        backends = sorted({r["backend"] for r in recs})
        fig, ax = plt.subplots(figsize=(max(6, 0.6 * len(variants) * max(1, len(backends)) / 2 + 3), 4.5))
        width = 0.8 / len(backends)
        by = {(r["variant"], r["backend"]): r for r in recs}
        for j, b in enumerate(backends):
            xs, ys, lo, hi = [], [], [], []
            for i, v in enumerate(variants):
                r = by.get((v, b))
                if r is None:
                    continue
                p50 = r.n("per_image_us")
                p90 = r.n("latency_p90_us") or p50
                xs.append(i + (j - (len(backends) - 1) / 2) * width)
                ys.append(p50)
                lo.append(0)
                hi.append(max(0.0, p90 - p50))
            ax.bar(xs, ys, width, yerr=[lo, hi], capsize=2, label=b)
        ax.set_xticks(range(len(variants)))
        ax.set_xticklabels(variants, rotation=30, ha="right", fontsize=8)
        ax.set_ylabel("per-image latency (µs), median; whisker to p90")
        ax.set_yscale("log")
        title = f"Per-image latency: {model} on {dataset}, batch {batch}"
        ax.set_title(title)
        ax.legend(fontsize=8)
        ax.grid(axis="y", alpha=0.3)
        plots.append(_save(fig, out, f"{prefix}latency_{_slug(model)}_{_slug(dataset)}_b{batch}", title,
                           "Median time per batch call / batch (pytest-benchmark rounds); whisker to p90."))
    return plots


def sparsity_plots(records: list[Record], out: Path, prefix: str = "") -> list[Plot]:
    plots = []
    for (model, dataset), recs in _pairs(records).items():
        pts = [(r.sparsity * 100, r.n("top1"), r["variant"]) for r in _one_per_variant(recs)
               if r.sparsity is not None and r.n("top1") is not None]
        if len(pts) < 2 or not any(s > 0.5 for s, _, _ in pts):
            continue
        fig, ax = plt.subplots(figsize=(6.5, 4.2))
        pts.sort()
        ax.plot([p[0] for p in pts], [p[1] for p in pts], "o", color="tab:blue")
        for s, a, v in pts:
            ax.annotate(v, (s, a), fontsize=7, xytext=(3, 3), textcoords="offset points")
        ax.set_xlabel("sparsity: 1 - nonzero/params (%)")
        ax.set_ylabel("top-1 accuracy (%)")
        title = f"Sparsity vs accuracy: {model} on {dataset}"
        ax.set_title(title)
        ax.grid(alpha=0.3)
        plots.append(_save(fig, out, f"{prefix}sparsity_{_slug(model)}_{_slug(dataset)}", title,
                           "Sparsity from the recorded params and nonzero_params of each variant."))
    return plots


def temperature_plots(records: list[Record], out: Path, prefix: str = "") -> list[Plot]:
    plots = []
    by_dataset: dict[str, list[Record]] = defaultdict(list)
    for r in records:
        by_dataset[r["dataset"]].append(r)
    for dataset, recs in sorted(by_dataset.items()):
        series: dict[tuple[str, float | None], list[tuple[float, float]]] = defaultdict(list)
        one = _one_per_variant_model(recs)
        for r in one:
            ta = distill_temperature(r["variant"])
            if ta and r.n("top1") is not None:
                series[(r["model"], ta[1])].append((ta[0], r.n("top1")))
        if not any(len(v) >= 1 for v in series.values()):
            continue
        fig, ax = plt.subplots(figsize=(6.5, 4.2))
        for (teacher, alpha), pts in sorted(series.items(), key=lambda kv: (kv[0][0], kv[0][1] or -1)):
            pts.sort()
            ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-",
                    label=f"student of {teacher}" + (f", alpha {alpha:g}" if alpha is not None else ""))
        scratch = [r.n("top1") for r in one if r["variant"] == "scratch-mlp_student" and r.n("top1") is not None]
        if scratch:
            ax.axhline(scratch[0], ls="--", color="gray", label="student from scratch")
        ax.set_xlabel("distillation temperature T")
        ax.set_ylabel("student top-1 accuracy (%)")
        title = f"Temperature vs student accuracy on {dataset}"
        ax.set_title(title)
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
        plots.append(_save(fig, out, f"{prefix}temperature_{_slug(dataset)}", title,
                           "Variants kd-tN (mlp_student distilled from the named teacher at temperature N)."))
    return plots


def _one_per_variant_model(recs: list[Record]) -> list[Record]:
    best: dict[tuple, Record] = {}
    for r in sorted(recs, key=lambda r: (r["backend"] != SIZE_BACKEND, r["batch"], r["backend"])):
        best.setdefault((r["model"], r["variant"]), r)
    return list(best.values())


def energy_plots(records: list[Record], out: Path, prefix: str = "") -> list[Plot]:
    pts = [(r, *r.energy_j_per_image()) for r in records]
    pts = [(r, e, src) for r, e, src in pts if e is not None]
    if not pts:
        return []
    plots = []
    groups: dict[tuple, list] = defaultdict(list)
    for r, e, src in pts:
        groups[(r["model"], r["dataset"], r["batch"])].append((r, e, src))
    for (model, dataset, batch), items in sorted(groups.items()):
        items.sort(key=lambda t: (t[0]["variant"] != "fp32", t[0]["variant"], t[0]["backend"]))
        fig, ax = plt.subplots(figsize=(max(6, 0.45 * len(items) + 3), 4.2))
        labels = [f"{r['variant']}\n{r['backend']}" for r, _, _ in items]
        colors = ["tab:green" if src.startswith("energy_gpu") else "tab:orange" for _, _, src in items]
        ax.bar(range(len(items)), [e * 1000 for _, e, _ in items], color=colors)
        ax.set_xticks(range(len(items)))
        ax.set_xticklabels(labels, rotation=30, ha="right", fontsize=7)
        ax.set_ylabel("energy per image above idle (mJ)")
        title = f"Energy per image: {model} on {dataset}, batch {batch}"
        ax.set_title(title)
        ax.grid(axis="y", alpha=0.3)
        plots.append(_save(fig, out, f"{prefix}energy_{_slug(model)}_{_slug(dataset)}_b{batch}", title,
                           "Green: GPU board (NVML); orange: CPU package (RAPL). Idle power subtracted; "
                           "measured in a window after the latency timing."))
    return plots


def energy_unavailable_reasons(records: list[Record]) -> list[str]:
    reasons = set()
    for r in records:
        for k in ("energy_gpu_method", "energy_cpu_method"):
            v = r.get(k)
            if isinstance(v, str) and v.startswith("unavailable"):
                reasons.add(f"{k.split('_')[1].upper()}: {v}")
    return sorted(reasons)


def invalid_left_out(records: list[Record]) -> str:
    """The note for plots drawn without the invalid records ('' when there are none)."""
    bad = [r for r in records if not r.valid]
    if not bad:
        return ""
    names = ", ".join(r.label for r in bad[:6]) + (f" and {len(bad) - 6} more" if len(bad) > 6 else "")
    return (f"Left out: {len(bad)} invalid record{'s' if len(bad) > 1 else ''} (top-1 guardrail or parity check "
            f"failed: failed measurements, not results): {names}.")


def all_plots(records: list[Record], out: Path, prefix: str = "", formats: tuple[str, ...] = FORMATS) -> list[Plot]:
    """Every figure the records support, as PNG (always) and SVG (when in ``formats``). Invalid
    records are left out (a failed measurement must not sit on a Pareto front); each caption says so."""
    out = Path(out)
    note = invalid_left_out(records)
    records = [r for r in records if r.valid]
    _formats[:] = formats
    try:
        plots = (pareto_plots(records, out, prefix) + latency_plots(records, out, prefix)
                 + sparsity_plots(records, out, prefix) + temperature_plots(records, out, prefix)
                 + energy_plots(records, out, prefix))
    finally:
        _formats[:] = FORMATS
    for p in plots:
        p.caption += f" {note}" if note else ""
    return plots
