"""The report: machines side by side, results, "is this compression real?", plots, and the
study's tables where the history has their rows. Markdown (images beside it) or one
self-contained HTML file (images as base64 data URIs)."""
from __future__ import annotations

import base64
import html
from dataclasses import dataclass
from pathlib import Path

from squeezebench.reports import paper
from squeezebench.reports.analysis import RATIO_BACKEND, compression_reality, latency_ratio, pareto_front
from squeezebench.reports.history import History, Record, group_by_machine
from squeezebench.reports.machines import group_by_name, machines_header, side_by_side
from squeezebench.reports.plots import Plot, all_plots, energy_unavailable_reasons
from squeezebench.reports.tables import MISSING, Table, fmt, fmt_kb, fmt_x


@dataclass
class Run:
    """One history, labelled with its machine (M1, M2...) for side-by-side columns."""

    label: str
    short: str
    machine: str
    facts: dict
    history: History

    @property
    def records(self) -> list[Record]:
        return self.history.records

    @property
    def histories(self) -> list[History]:
        return [self.history]


def machine_runs(histories: list[History]) -> list[Run]:
    """Histories grouped by machine (first seen first), oldest first within a machine."""
    out = []
    groups = group_by_machine(histories)
    for i, hs in enumerate(groups.values()):
        m = hs[-1].machine
        for j, h in enumerate(hs):
            short = f"M{i + 1}" + (f".{j + 1}" if len(hs) > 1 else "")
            out.append(Run(f"{short}: {m.label}, {h.path.name}", short, m.label, h.machine.facts, h))
    return out


def machines_table(runs: list[Run]) -> Table:
    machines: dict[str, list[Run]] = {}
    for r in runs:
        machines.setdefault(r.machine, []).append(r)
    ms = list(machines.values())
    keys: list[str] = []
    for rs in ms:
        keys += [k for k in rs[0].facts if k not in keys]
    # Runs of one machine may differ in what does not decide speed (node name, library
    # versions): every value is shown, oldest first.
    rows = [[k] + [" / ".join(dict.fromkeys(fmt(r.facts.get(k)) for r in rs)) for rs in ms] for k in keys]
    rows.append(["histories"] + ["; ".join(f"{r.short} = {r.history.path.name} (commit {r.history.commit}, "
                                           f"{r.history.datetime[:19]})" for r in rs) for rs in ms])
    return Table("Machines", ["fact"] + [f"M{i + 1}: {rs[0].machine}" for i, rs in enumerate(ms)], rows,
                 anchor="machines")


def _sort_key(key: tuple) -> tuple:
    m, d, v, b, n = key
    return (str(d), str(m), v != "fp32", str(v), str(b), n or 0)


def side_by_side_table(runs: list[Run]) -> Table:
    """Every record; per machine: top-1, median per-image latency, its ratio to fp32 torch-cpu."""
    keys = sorted({r.key for run in runs for r in run.records}, key=_sort_key)
    per = [{r.key: r for r in run.records} for run in runs]
    cols = ["model", "dataset", "variant", "backend", "batch"]
    per_run = ["validity", "top-1 %", "µs/image p50", "p99", f"vs fp32 {RATIO_BACKEND}", "size kB",
               "energy mJ/image", "parity (min)", "computed in"]
    for run in runs:
        p = f"{run.short} " if len(runs) > 1 else ""
        cols += [p + c for c in per_run]
    rows = []
    n_invalid = n_inferred = 0
    for k in keys:
        row = [str(x) for x in k]
        for run, idx in zip(runs, per):
            r = idx.get(k)
            if r is None:
                row += [MISSING] + [""] * (len(per_run) - 1)
                continue
            size, field = r.size()
            e, src = r.energy_j_per_image()
            n_invalid += not r.valid
            n_inferred += r.validity_inferred
            row += [r.validity_text(), fmt(r.n("top1")), fmt(r.n("per_image_us"), 1), fmt(r.n("latency_p99_us"), 1),
                    fmt_x(latency_ratio(r, run.records)),
                    fmt_kb(size) + ("" if field == "compressed_bytes" else f" ({r['artifact_format'] or 'file'})"),
                    fmt(e * 1000, 3) + (" GPU" if src and "gpu" in src else " CPU") if e is not None else "—",
                    r.parity_text(), r.computed_in() or "—"]
        rows.append(row)
    notes = [f"validity: INVALID = the record's top-1 guardrail or parity check failed: a failed measurement, "
             f"not a result, and never a baseline ({n_invalid} here). 'ok (inferred)': recorded before records "
             f"carried `valid`; recomputed from top1_floor and parity_min ({n_inferred} here).",
             f"vs fp32 {RATIO_BACKEND}: per-image time over the fp32 {RATIO_BACKEND} record of the same "
             "model/dataset/batch in the same run (what the compare gate judges); — when that record is "
             "missing or invalid.",
             "size: compressed_bytes where recorded, else the backend's artifact_bytes (format named); 1 kB = 1000 B.",
             "parity (min): share of top-1 predictions equal to the reference's, and the minimum the record "
             "had to reach; 'round trip only': torch-cpu against the same torch module (no independent check).",
             "computed in: what really ran where the variant's name could mislead: a precision the runtime "
             "chose over the hint (e.g. fp16 run in bf16), and for int8 variants how much of the model ran in "
             "int8 (int8_label, int8_share of the MACs); — when nothing differs or the record does not say."]
    return Table("Results" + (" side by side" if len(runs) > 1 else ""), cols, rows, notes=notes, anchor="results")


def reality_table(run: Run, title: str) -> Table:
    rows = []
    for x in sorted(compression_reality(run.records), key=lambda x: _sort_key(x.record.key)):
        r = x.record
        rows.append([r["model"], r["dataset"], r["variant"], r["backend"], str(r["batch"]),
                     fmt_x(x.speedup) + (f"{_ci_text(x.band, 2)} {x.change}" if x.band else ""),
                     fmt_x(x.mac_reduction), fmt_x(x.nonzero_reduction),
                     fmt_x(x.size_reduction) + ("" if x.size_field == "compressed_bytes" else " (file)"),
                     (x.flag if x.flag.startswith(("INVALID", "not compared")) else "⚠ " + x.flag) if x.flag
                     else "ok"])
    return Table(title, ["model", "dataset", "variant", "backend", "batch", "speedup vs fp32",
                         "MACs reduction", "nonzero-weight reduction", "size reduction", "is it real?"], rows,
                 notes=["Each variant against the fp32 baseline on the same backend, batch, model and dataset, "
                        "in the same run; in brackets the speedup between the two medians' 95 % interval ends, "
                        "and the verdict it gives (faster, slower, no measurable change). Flagged: size or "
                        "nonzero weights went down, time did not (by that interval where the records carry one) "
                        "(e.g. dense kernels multiply the zeros anyway). INVALID: the variant's record failed "
                        "its guardrail or parity check; an invalid fp32 record is no baseline (not compared)."],
                 anchor="reality")


def _ci_text(ci, digits: int = 1) -> str:
    """An interval as " [low-high]", or "" when there is none."""
    return f" [{ci[0]:.{digits}f}-{ci[1]:.{digits}f}]" if isinstance(ci, (list, tuple)) and len(ci) == 2 else ""


def speedup_table(run: Run, batches: tuple[int, ...] = (1, 256), title: str = "Speedups beside MAC reductions") -> Table:
    """One row per model/dataset/variant/backend: top-1, the three sizes, MACs, and per batch the
    median per-image time and its speedup over fp32 on the same backend (same run)."""
    speed = {x.record.key: x for x in compression_reality(run.records)}
    by_key = {r.key: r for r in run.records}
    groups = sorted({(m, d, v, b) for (m, d, v, b, _n) in by_key}, key=lambda k: _sort_key((*k, 0)))
    cols = ["model", "dataset", "variant", "backend", "top-1 %", "artifact kB", "compressed kB", "nonzero params",
            "MMACs/image", "MACs reduction"]
    for n in batches:
        cols += [f"µs/image b{n} p50", f"speedup b{n}"]
    rows = []
    for m, d, v, b in groups:
        recs = [by_key.get((m, d, v, b, n)) for n in batches]
        any_rec = next((r for r in recs if r is not None), None)
        if any_rec is None:
            continue
        macs = any_rec.n("macs")
        red = next((speed[r.key].mac_reduction for r in recs if r is not None and r.key in speed), None)
        top1 = fmt(any_rec.n("top1")) + ("" if all(r is None or r.valid for r in recs) else " INVALID")
        row = [str(m), str(d), str(v), str(b), top1, fmt_kb(any_rec.n("artifact_bytes")),
               fmt_kb(any_rec.n("compressed_bytes")), fmt(any_rec.n("nonzero_params"), 0),
               fmt(macs / 1e6 if macs is not None else None, 2), "1.00x" if v == "fp32" else fmt_x(red)]
        for r in recs:
            if r is None:
                row += [MISSING, ""]
                continue
            x = speed.get(r.key)
            sp = "1.00x" if v == "fp32" else fmt_x(x.speedup if x else None)
            band = x.band if x is not None else None
            row += [fmt(r.n("per_image_us"), 1) + _ci_text(r.get("latency_p50_ci95_us")),
                    sp + (_ci_text(band, 2) if v != "fp32" else "")]
        rows.append(row)
    return Table(title, cols, rows, anchor="speedups", notes=[
        "µs/image: the median per-image time, with its 95 % interval [low-high] where the record carries one "
        "(latency_p50_ci95_us: order statistics of the rounds). "
        "speedup bN: fp32's median per-image time over the variant's, same backend, batch, model and dataset, "
        "same run (>1 = faster); in brackets, the speedup between the two medians' interval ends (lowest: "
        "fp32's low end over the variant's high end), so a bracket that contains 1.00 is no measurable change. MACs reduction: fp32's MACs per image over the variant's, counted on the "
        "torch model (the record's `macs`; a pruned zero still costs a MAC in a dense kernel). "
        "Sizes: artifact = every file the backend loads; compressed = our compact encoding (model.sqz); "
        "1 kB = 1000 B. INVALID: a record failed its guardrail or parity check."])


DEFAULT_BUDGET_PP = 1.0


def _within_budget(run: Run, budget_pp: float) -> dict[tuple, list[Record]]:
    """Valid records per (model, dataset, backend, batch) whose top-1 is within ``budget_pp`` of
    the fp32 record of the same backend (the fp32 record itself included)."""
    by_key = {r.key: r for r in run.records}
    out: dict[tuple, list[Record]] = {}
    for r in run.records:
        m, d, v, b, n = r.key
        base = by_key.get((m, d, "fp32", b, n))
        if base is None or not r.valid or r.n("per_image_us") is None or r.n("top1") is None or base.n("top1") is None:
            continue
        if r.n("top1") >= base.n("top1") - budget_pp:
            out.setdefault((m, d, b, n), []).append(r)
    return out


def recommended_table(run: Run, budget_pp: float = DEFAULT_BUDGET_PP, title: str = "Recommended variant per runtime and batch") -> Table:
    """Per model, dataset, runtime and batch: the fastest valid variant whose top-1 is within the
    budget of fp32 on that runtime, with its interval and its speedup over fp32 there."""
    speed = {x.record.key: x for x in compression_reality(run.records)}
    rows = []
    for (m, d, b, n), recs in sorted(_within_budget(run, budget_pp).items(), key=lambda kv: _sort_key((*kv[0][:2], "", *kv[0][2:]))):
        best = min(recs, key=lambda r: r.n("per_image_us"))
        base = next(r for r in recs if r["variant"] == "fp32") if any(r["variant"] == "fp32" for r in recs) else None
        x = speed.get(best.key)
        sp = "1.00x (fp32 is fastest)" if best["variant"] == "fp32" else (
            fmt_x(x.speedup if x else None) + (_ci_text(x.band, 2) if x is not None else "")
            + (f" ({x.change})" if x is not None and x.change else ""))
        rows.append([str(m), str(d), str(b), str(n), str(best["variant"]), fmt(best.n("top1")),
                     fmt(base.n("top1")) if base else MISSING,
                     fmt(best.n("per_image_us"), 2) + _ci_text(best.get("latency_p50_ci95_us"), 2), sp,
                     fmt_kb(best.size()[0])])
    return Table(title, ["model", "dataset", "runtime", "batch", "recommended", "top-1 %", "fp32 top-1 %",
                         "µs/image p50 [95 % CI]", "speedup vs fp32 here", "size kB"], rows, anchor="recommended",
                 notes=[f"Budget: top-1 at most {budget_pp:g} pp below fp32 on the same runtime (html --budget-pp); "
                        "only valid records (guardrail and parity passed). Speedup in brackets: between the two "
                        "medians' interval ends; a bracket containing 1.00 is no measurable change."])


def explorer_figures(run: Run, budget_pp: float = DEFAULT_BUDGET_PP) -> list:
    """One interactive Pareto plot per model and dataset (plotly): top-1 against size, hover with
    the variant id, top-1, bytes and the batch-1 latency per runtime; the front and the winners
    (smallest, and fastest at batch 1 per runtime, within the budget) highlighted."""
    from squeezebench.reports import interactive
    from squeezebench.reports.analysis import technique_family

    figs = []
    fast = _within_budget(run, budget_pp)
    pairs: dict[tuple, list[Record]] = {}
    for r in run.records:
        pairs.setdefault((r["model"], r["dataset"]), []).append(r)
    for (m, d), recs in sorted(pairs.items(), key=lambda kv: (str(kv[0][0]), str(kv[0][1]))):
        per_variant: dict[str, dict] = {}
        for r in sorted(recs, key=lambda r: (r["backend"] != "torch-cpu", r["batch"])):
            size, _ = r.size()
            if size is None or r.n("top1") is None:
                continue
            p = per_variant.setdefault(r["variant"], {"variant": r["variant"], "top1": r.n("top1"), "bytes": size,
                                                      "group": technique_family(r["variant"])})
            if r["batch"] == 1 and r.n("per_image_us") is not None:
                p[f"{r['backend']} b1 µs"] = f"{r.n('per_image_us'):.2f}" + ("" if r.valid else " (invalid)")
        pts = list(per_variant.values())
        if not pts:
            continue
        front = {pts[i]["variant"] for i in pareto_front([(p["bytes"], p["top1"]) for p in pts])}
        base = per_variant.get("fp32")
        winners = {}
        ok = [p for p in pts if base is None or p["top1"] >= base["top1"] - budget_pp]
        if ok:
            winners["smallest"] = min(ok, key=lambda p: p["bytes"])["variant"]
        for (mm, dd, b, n), rs in fast.items():
            if (mm, dd) == (m, d) and n == 1:
                winners[f"fastest on {b} b1"] = min(rs, key=lambda r: r.n("per_image_us"))["variant"]
        hover = sorted({k for p in pts for k in p if k.endswith("b1 µs")})
        figs.append((f"{m} on {d}", interactive.pareto_figure(
            pts, title=f"{m} on {d}: top-1 against size", x="bytes", x_title="bytes (compressed, else artifact; log)",
            front=front, winners=winners, hover=hover), winners))
    return figs


def _plots_for(runs: list[Run], out: Path, formats: tuple[str, ...]) -> list[tuple[str, list[Plot]]]:
    res = []
    for run in runs:
        prefix = f"{run.short.lower()}_" if len(runs) > 1 else ""
        res.append((run.label, all_plots(run.records, out, prefix, formats)))
    return res


def _paper_sections(runs: list[Run], backend: str, batch: int) -> list[tuple[str, list[str], list[Table]]]:
    out = []
    for run in runs:
        h = run.history
        hit, total = paper.matched_count(h, backend, batch)
        if hit:
            out.append((run.label, paper.preamble(h, backend, batch), paper.paper_tables(h, backend=backend, batch=batch)))
    return out


def build(histories: list[History], out: Path, *, backend: str = "torch-cpu", batch: int = 1,
          with_paper: bool = True, formats: tuple[str, ...] = ("png", "svg")) -> dict:
    runs = machine_runs(histories)
    plot_dir = out / "plots"
    return {
        "runs": runs,
        "machines": machines_table(runs),
        "results": side_by_side_table(runs),
        "speedups": [speedup_table(run, title="Speedups beside MAC reductions" + (f" — {run.label}" if len(runs) > 1 else ""))
                     for run in runs],
        "reality": [reality_table(run, "Is this compression real?" + (f" — {run.label}" if len(runs) > 1 else ""))
                    for run in runs],
        "plots": _plots_for(runs, plot_dir, formats),
        "energy_missing": sorted({x for run in runs for x in energy_unavailable_reasons(run.records)}),
        "paper": _paper_sections(runs, backend, batch) if with_paper else [],
        "named": _named_machines(histories),
    }


def _named_machines(histories: list[History]) -> list[Table]:
    """"Machines side by side" by machine name (the storage folders of several machines), when
    the histories come from more than one; [] otherwise."""
    named = group_by_name(histories)
    return [machines_header(named), side_by_side(named)] if len(named) > 1 else []


def _intro(histories: list[History]) -> list[str]:
    n = sum(len(h.records) for h in histories)
    return [f"{n} records from {len(histories)} saved pytest-benchmark histories: "
            + ", ".join(str(h.path) for h in histories) + ". Nothing was rerun to make this report."]


def markdown(histories: list[History], out: Path, *, embed: bool = False, **kw) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    parts = build(histories, out, **kw)
    md = ["# squeezebench report", "", *_intro(histories), "", parts["machines"].markdown(2),
          parts["results"].markdown(2)]
    md += [t.markdown(2) for t in parts["named"]]
    md += [t.markdown(2) for t in parts["speedups"]]
    md += [t.markdown(2) for t in parts["reality"]]
    md.append("## Plots\n")
    for label, plots in parts["plots"]:
        md.append(f"### {label}\n")
        for p in plots:
            src = _data_uri(p.png) if embed else p.png.relative_to(out).as_posix()
            md += [f"#### {p.title}", "", f"![{p.title}]({src})", "", f"*{p.caption}*", ""]
    if parts["energy_missing"]:
        md.append("Energy not measured for some records: " + "; ".join(parts["energy_missing"]) + "\n")
    for label, pre, tables in parts["paper"]:
        md += [f"## The study's tables, measured on {label}", ""] + [f"- {p}" for p in pre] + [""]
        md += [t.markdown(3) for t in tables]
    path = out / "report.md"
    path.write_text("\n".join(md), encoding="utf-8")
    return path


def _data_uri(png: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(png.read_bytes()).decode("ascii")


CSS = """
body{font-family:system-ui,sans-serif;margin:2em;max-width:1500px;color:#222}
table{border-collapse:collapse;margin:.5em 0 1em;font-size:12px}
th,td{border:1px solid #ccc;padding:3px 6px;text-align:left;vertical-align:top}
th{background:#f0f0f0;position:sticky;top:0}
td.missing{color:#999;font-style:italic} td.bad{color:#b00;font-weight:600}
p.note{font-size:12px;color:#555;font-style:italic}
figure{display:inline-block;margin:.5em;max-width:720px} figure img{max-width:100%}
figcaption{font-size:12px;color:#555}
"""


def html_report(histories: list[History], out: Path, *, budget_pp: float = DEFAULT_BUDGET_PP, **kw) -> Path:
    """``report.html``: one page to explore, offline: sortable and filterable tables, an
    interactive Pareto plot per model (plotly), the recommended variant per runtime and batch."""
    from squeezebench.reports import interactive

    out.mkdir(parents=True, exist_ok=True)
    parts = build(histories, out, formats=("png",), **kw)  # embedded; `plots` writes the SVGs
    e = html.escape
    body = ["<h1>squeezebench report</h1>"] + [f"<p>{e(p)}</p>" for p in _intro(histories)]
    nav = ['<a href="#recommended">recommended</a>', '<a href="#explore">explore</a>',
           '<a href="#machines">machines</a>', '<a href="#results">results</a>', '<a href="#speedups">speedups</a>', '<a href="#reality">is it real?</a>',
           '<a href="#plots">plots</a>'] + (['<a href="#paper">study tables</a>'] if parts["paper"] else []) \
        + (['<a href="#side-by-side">machines side by side</a>'] if parts["named"] else [])
    body.append("<p>" + " · ".join(nav) + "</p>")
    runs = parts["runs"]
    body += [interactive.sortable(recommended_table(run, budget_pp, "Recommended variant per runtime and batch"
                                                    + (f" — {run.label}" if len(runs) > 1 else "")).html(2)) for run in runs]
    body.append('<h2 id="explore">Explore: top-1 against size</h2><p class="note">Hover a point for its variant id, '
                "top-1, bytes and batch-1 latency per runtime; click legend entries to hide groups; drag to zoom. "
                f"Stars: the smallest variant and the fastest per runtime at batch 1 within {budget_pp:g} pp of fp32.</p>")
    explore = []
    for i, run in enumerate(runs):
        for j, (label, fig, winners) in enumerate(explorer_figures(run, budget_pp)):
            body.append(f"<h3>{e(label)}" + (f" — {e(run.short)}" if len(runs) > 1 else "") + "</h3>")
            body.append(interactive.figure_div(fig, f"pareto-{i}-{j}"))
            explore.append({"pair": label, "run": run.short, "div": f"pareto-{i}-{j}", "winners": winners})
    body.append(interactive.json_script(explore, "explore-index"))
    tabs = [parts["machines"], parts["results"], *parts["named"], *parts["speedups"], *parts["reality"]]
    body += [interactive.sortable(t.html(2)) for t in tabs]
    body.append('<h2 id="plots">Plots</h2>')
    for label, plots in parts["plots"]:
        body.append(f"<h3>{e(label)}</h3>")
        for p in plots:
            body.append(f'<figure><img alt="{e(p.title)}" src="{_data_uri(p.png)}">'
                        f"<figcaption><b>{e(p.title)}</b>. {e(p.caption)}</figcaption></figure>")
    if parts["energy_missing"]:
        body.append(f'<p class="note">Energy not measured for some records: {e("; ".join(parts["energy_missing"]))}</p>')
    for i, (label, pre, tables) in enumerate(parts["paper"]):
        body.append(f'<h2{" id=paper" if i == 0 else ""}>The study\'s tables, measured on {e(label)}</h2>')
        body.append("<ul>" + "".join(f"<li>{e(p)}</li>" for p in pre) + "</ul>")
        body += [interactive.sortable(t.html(3)) for t in tables]
    doc = interactive.page("squeezebench report", body, css=CSS)
    path = out / "report.html"
    path.write_text(doc, encoding="utf-8")
    return path
