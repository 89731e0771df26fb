"""The outputs of ``squeezebench search``: JSON (everything), a Markdown table (the trials, the
front, the winners), a PNG of the front (matplotlib) and an HTML page to explore it (plotly)."""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from squeezebench.reports import interactive  # noqa: E402
from squeezebench.reports.analysis import technique_family  # noqa: E402
from squeezebench.reports.tables import Table, fmt_kb  # noqa: E402


def _atomic_write(path: Path, data: str | bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "wb") as f:
        f.write(data.encode() if isinstance(data, str) else data)
    os.replace(tmp, path)


def _ratio(r: dict) -> str:
    return f"{r['ratio_vs_fp32_onnx']:.1f}x" if r.get("ratio_vs_fp32_onnx") else "-"


def tables(result: dict) -> list[Table]:
    """The winners, the front (with measured latency), and every trial."""
    lat = result.get("latency", {})
    trials = {r["variant"]: r for r in result["trials"] if r["state"] == "complete"}
    win = Table("Winners (within the budget)", ["objective", "variant", "value", "top-1 %", "vs fp32"],
                [[o, w["variant"], _value(o, w), f"{w['top1']:.2f}", _versus(o, w, trials)]
                 for o, w in result["winners"].items()])
    if "missed" in result:
        win.notes.append(result["missed"])
    if result["winners"]:
        s = result["spec"]
        ids = ",".join(dict.fromkeys(w["variant"] for w in result["winners"].values()))
        win.notes.append(f"Benchmark them (or pin them in a profile's variants): pytest bench/ --sb-models {s['model']} "
                         f"--sb-datasets {s['dataset']} --sb-variants fp32,{ids}")
    lat_cols = sorted(lat)
    front = Table("Front: top-1 x size" + (" x MACs per compute precision, latency measured" if lat else ""),
                  ["variant", "top-1 %", "compressed kB", "vs fp32 ONNX", "MACs/image", *lat_cols],
                  [[v, f"{trials[v]['top1']:.2f}", fmt_kb(trials[v]["compressed_bytes"]), _ratio(trials[v]),
                    f"{trials[v]['macs']:,}", *(_lat(lat[c].get(v)) for c in lat_cols)] for v in result["front"]])
    if lat:
        front.rows.insert(0, ["fp32 (baseline)", f"{result['baseline_top1']:.2f}", fmt_kb(result.get("fp32_onnx_bytes")),
                              "1.0x (ONNX file)", "-", *(_lat(lat[c].get("fp32")) for c in lat_cols)])
    every = Table("Every trial", ["#", "variant", "state", "top-1 %", "compressed kB", "vs fp32 ONNX", "seconds", "why"],
                  [[str(r["number"]), r["variant"] or "-", r["state"] + (" (front)" if r.get("on_front") else ""),
                    f"{r['top1']:.2f}" if "top1" in r else "-",
                    fmt_kb(r["compressed_bytes"]) if "compressed_bytes" in r else "-", _ratio(r),
                    f"{r['seconds']:.0f}" if r.get("seconds") is not None else "-",
                    r.get("reason", "" if r.get("feasible", True) else "below the floor")]
                   for r in result["trials"]])
    return [win, front, every]


def _spread(m: dict, digits: int = 2) -> str:
    """A latency's uncertainty: the range over runs, or one run's 95 % interval."""
    if m.get("spread_us") and m.get("runs", 1) > 1:
        lo, hi = m["spread_us"]
        return f" ({m['runs']} runs: {lo:.{digits}f}-{hi:.{digits}f})"
    ci = m.get("ci95_us")
    return f" [{ci[0]:.{digits}f}, {ci[1]:.{digits}f}]" if ci else ""


def _value(objective: str, w: dict) -> str:
    if objective.startswith("latency"):
        return f"{w['value']:.2f} µs/image" + _spread(w)
    return f"{fmt_kb(w['value'])} kB"


def _versus(objective: str, w: dict, trials: dict) -> str:
    if objective.startswith("latency"):
        s, e, band = w.get("speedup_vs_fp32_same_runtime"), w.get("speedup_vs_fp32_torch_eager"), \
            w.get("speedup_vs_fp32_same_runtime_ci")
        over = f" over {w['runs']} runs" if w.get("runs", 1) > 1 else ""
        same = (f"{s:.2f}x fp32 on this runtime" + (f" [{band[0]:.2f}, {band[1]:.2f}]{over}" if band else "")) if s else ""
        if s and w.get("reliable") is False:
            same += " (not reliably faster: the range reaches 1.00x)"
        return "; ".join(x for x in (same, f"{e:.2f}x fp32 in torch eager" if e else "") if x) or "-"
    return _ratio(trials[w["variant"]]) + " smaller than the fp32 ONNX file" if w["variant"] in trials else "-"


def _lat(m: dict | None) -> str:
    if not m or m.get("per_image_us") is None:
        return "-"
    return f"{m['per_image_us']:.2f} µs" + _spread(m) + ("" if m["valid"] else " INVALID")


def markdown(result: dict) -> str:
    s = result["spec"]
    head = [f"# Search: {s['model']} on {s['dataset']}", "",
            f"Baseline {result['baseline_top1']:.2f} % on {s['eval_backend']}; floor {result['floor']:.2f} % "
            + (f"(budget {s['budget_pp']:g} pp)" if s.get("budget_pp") is not None else "(absolute)")
            + f"; objectives {', '.join(s['objectives'])}; seed {s['seed']}; study {result['study']}.",
            f"Trials: {result['counts']['complete']} complete, {result['counts']['pruned']} stopped early, "
            f"{result['counts']['fail']} failed; search {result.get('search_seconds', 0):.0f} s"
            + _trial_time(result)
            + (f", latency {result['latency_seconds']:.0f} s" if "latency_seconds" in result else "") + ".", ""]
    return "\n".join(head) + "\n".join(t.markdown(2) for t in tables(result))


def _trial_time(result: dict) -> str:
    """Where the search's time went: the trials' own seconds (sum, median, slowest)."""
    secs = sorted(r["seconds"] for r in result["trials"] if r.get("seconds") is not None)
    if not secs:
        return ""
    slow = max((r for r in result["trials"] if r.get("seconds") is not None), key=lambda r: r["seconds"])
    return (f" ({sum(secs):.0f} s in trials of this run and earlier ones: median {secs[len(secs) // 2]:.0f} s, "
            f"slowest {slow['seconds']:.0f} s, {slow['variant']})")


def points(result: dict) -> list[dict]:
    lat = result.get("latency", {})
    out = []
    for r in result["trials"]:
        if r["state"] != "complete" or not r.get("feasible"):
            continue
        p = {"variant": r["variant"], "top1": r["top1"], "compressed_bytes": r["compressed_bytes"],
             "group": technique_family(r["variant"]), "ratio vs fp32 ONNX": _ratio(r), "MACs": f"{r['macs']:,}"}
        for c, per in lat.items():
            if r["variant"] in per:
                p[c] = _lat(per[r["variant"]])
        out.append(p)
    return out


def plot_png(result: dict, path: Path) -> Path:
    pts = points(result)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.scatter([p["compressed_bytes"] / 1000 for p in pts], [p["top1"] for p in pts], s=24, color="tab:blue",
               label="feasible trials")
    fr = sorted((p for p in pts if p["variant"] in result["front"]), key=lambda p: p["compressed_bytes"])
    ax.step([p["compressed_bytes"] / 1000 for p in fr], [p["top1"] for p in fr], where="post", color="black",
            label="front")
    for o, w in result["winners"].items():
        p = next((p for p in pts if p["variant"] == w["variant"]), None)
        if p:
            ax.scatter(p["compressed_bytes"] / 1000, p["top1"], marker="*", s=160, label=f"winner: {o}")
            ax.annotate(p["variant"], (p["compressed_bytes"] / 1000, p["top1"]), fontsize=7, xytext=(3, 3),
                        textcoords="offset points")
    ax.axhline(result["floor"], color="tab:red", lw=1, ls="--", label=f"floor {result['floor']:.2f} %")
    ax.set_xscale("log")
    ax.set_xlabel("compressed_bytes (kB)")
    ax.set_ylabel("top-1 (%)")
    s = result["spec"]
    ax.set_title(f"Search front: {s['model']} on {s['dataset']}")
    ax.legend(fontsize=7, loc="lower right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def html_page(result: dict) -> str:
    s = result["spec"]
    title = f"Search: {s['model']} on {s['dataset']}"
    fig = interactive.pareto_figure(points(result), title=title, x="compressed_bytes",
                                    x_title="compressed_bytes (log)", front=set(result["front"]),
                                    winners={o: w["variant"] for o, w in result["winners"].items()},
                                    hover=["ratio vs fp32 ONNX", "MACs", *sorted(result.get("latency", {}))])
    md = markdown(result).splitlines()
    body = [f"<h1>{title}</h1>", *(f"<p>{line}</p>" for line in md[2:4]),
            interactive.figure_div(fig, "pareto"),
            *(interactive.sortable(t.html(2)) for t in tables(result)),
            interactive.json_script(result, "search-result")]
    return interactive.page(title, body, css="body{font-family:system-ui,sans-serif;margin:2em}"
                                             "table{border-collapse:collapse;font-size:12px}"
                                             "th,td{border:1px solid #ccc;padding:3px 6px}")


def write_search_report(result: dict, out: Path) -> dict[str, Path]:
    out.mkdir(parents=True, exist_ok=True)
    s = result["spec"]
    stem = "search_" + "".join(c if c.isalnum() or c in "-_." else "_" for c in f"{s['model']}_{s['dataset']}")
    files = {"json": out / f"{stem}.json", "md": out / f"{stem}.md", "png": out / f"{stem}.png",
             "html": out / f"{stem}.html"}
    _atomic_write(files["json"], json.dumps(result, indent=1, default=str))
    _atomic_write(files["md"], markdown(result))
    plot_png(result, files["png"])
    _atomic_write(files["html"], html_page(result))
    return files
