"""``squeezebench VIEW`` (and ``python -m reports`` in the squeezebench repo): views of saved pytest-benchmark histories (never reruns anything)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from squeezebench.reports.compare import DEFAULTS
from squeezebench.reports.history import HistoryError, expand_paths, load_history, load_histories

HISTORY_HELP = ("pytest-benchmark JSON files, or directories (each gives the newest NNNN_*.json of every "
                "machine folder in it); a directory or file may be an fsspec URL (s3://bucket/benchmarks, "
                "memory://...; file:// is local). Default: .benchmarks")


def _parser(prog: str = "squeezebench") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog,
        description="Reports and regression gates from saved pytest-benchmark histories "
                    "(.benchmarks/<machine>/NNNN_*.json). Reads only; never reruns a benchmark. "
                    "Unreadable files are named on stderr and the others are still read.",
        epilog="views: summary, machines, speedups, paper, plots, markdown, html, compare, trend. "
               f"'{prog} VIEW --help' for each one's options. '{prog} search --help': the budget search "
               f"(trains and measures; not a view). '{prog} build --help': the build phase (pytest "
               "--sb-build-only; not a view).")
    sub = p.add_subparsers(dest="view", metavar="VIEW", required=True)

    s = sub.add_parser("summary", help="machines and every record, as a text table")
    s.add_argument("histories", nargs="*", metavar="HISTORY", help=HISTORY_HELP)
    s.add_argument("--every", action="store_true", help="a directory gives every history in it, not the newest")

    m = sub.add_parser("machines", help="histories from many machines side by side: per record, each machine's "
                                        "newest median µs/image (95 %% interval) and top-1, and its time over "
                                        "the first machine's",
                       description="Reads every run under ROOTs (machine folders copied in from several machines, "
                                   "local or fsspec URLs; read only) and groups them by machine: the name the "
                                   "plugin recorded (--sb-machine), else the folder's name. Prints a Markdown "
                                   "table of the machines (CPU, kernel flags, runs, dates) and one of the records.")
    m.add_argument("histories", nargs="*", metavar="ROOT",
                   help="storage folders, history files or fsspec URLs (s3://bucket/benchmarks, file:///mnt/nfs/"
                        "benchmarks); every NNNN_*.json under each is read. Default: .benchmarks")
    m.add_argument("--format", choices=("markdown", "text"), default="markdown", help="output format. Default: markdown")
    m.add_argument("-o", "--output", type=Path, default=None, help="write to this file. Default: stdout")

    sp = sub.add_parser("speedups", help="per variant and backend: top-1, the three sizes, MACs, and per batch "
                                         "the median per-image time and its speedup over fp32")
    sp.add_argument("history", nargs="?", metavar="HISTORY", help="one history file or directory (newest). "
                                                                  "Default: .benchmarks")
    sp.add_argument("--batches", default="1,256", help="comma list of batch sizes, a column pair each. Default: 1,256")
    sp.add_argument("--format", choices=("markdown", "text"), default="text", help="output format. Default: text")

    pp = sub.add_parser("paper", help="the study's Tables 1-20 from one history: our measurement in every "
                                      "cell, the study's figure beside it")
    pp.add_argument("history", nargs="?", metavar="HISTORY", help="one history file or directory (newest). "
                                                                  "Default: .benchmarks")
    pp.add_argument("--backend", default="torch-cpu", help="backend whose records fill the table. Default: torch-cpu")
    pp.add_argument("--batch", type=int, default=1, help="batch size of the timed records (s/image). Default: 1")
    pp.add_argument("--tables", default=None, help="comma list of table numbers. Default: all (1-20)")
    pp.add_argument("--format", choices=("markdown", "text", "html"), default="markdown",
                    help="output format. Default: markdown")
    pp.add_argument("-o", "--output", type=Path, default=None, help="write to this file. Default: stdout")

    for name, helptext in (("plots", "PNG and SVG figures: accuracy vs bytes (Pareto), latency, sparsity vs "
                                     "accuracy, temperature vs student accuracy, energy"),
                           ("markdown", "a Markdown report (report.md) with the plots beside it"),
                           ("html", "a self-contained HTML report (report.html, plots embedded)")):
        v = sub.add_parser(name, help=helptext)
        v.add_argument("histories", nargs="*", metavar="HISTORY", help=HISTORY_HELP)
        v.add_argument("-o", "--output", type=Path, default=Path("reports/out"),
                       help="output directory. Default: reports/out")
        v.add_argument("--every", action="store_true", help="a directory gives every history in it, not the newest")
        if name != "plots":
            v.add_argument("--backend", default="torch-cpu", help="backend for the study's tables. Default: torch-cpu")
            v.add_argument("--batch", type=int, default=1, help="batch for the study's tables. Default: 1")
            v.add_argument("--no-paper", action="store_true", help="leave out the study's tables")
        if name == "markdown":
            v.add_argument("--embed", action="store_true", help="embed images as data URIs instead of links")
        if name == "html":
            v.add_argument("--budget-pp", type=float, default=1.0,
                           help="top-1 drop from fp32 (same runtime) a recommended variant may have, pp. Default: 1.0")

    c = sub.add_parser(
        "compare", help="regression gate: exit 1 when NEW regresses against BASE",
        description="Direction-aware gate. Regressions: top-1 lower by more than --top1-tol; artifact_bytes "
                    "or compressed_bytes larger by more than --size-tol; latency slower: NEW's block medians, "
                    "divided by the machine-speed factor of the two runs (median NEW/BASE over all records), "
                    "against BASE's by a one-sided Mann-Whitney U test, failing when p < --latency-alpha and "
                    "the slowdown exceeds --latency-tol (records without blocks: the ratio to the same run's "
                    "fp32 torch-cpu record); energy per image higher by more than --energy-tol; the int8 "
                    "share of MACs lower by more than --int8-share-tol; a number turning unavailable. "
                    "Tolerances per group of test ids come from [tool.squeezebench.gate] in pyproject.toml; "
                    "options override them. Absolute times are shown, gated only with --gate-absolute. "
                    "Records of BASE missing in NEW fail unless --allow-missing. "
                    "A record whose guardrail or parity check failed is invalid: every invalid record in "
                    "NEW fails; an invalid BASE record is no baseline (not compared, fails nothing). "
                    "Exit 0: nothing regressed; 1: something did; 2: a history or the config could not be read.")
    c.add_argument("base", metavar="BASE", help="the history before (file, or directory: its newest); several "
                                                "files joined by commas are pooled as runs of one commit")
    c.add_argument("new", metavar="NEW", help="the history after, as BASE")
    c.add_argument("--config", default=None,
                   help="pyproject.toml (or TOML file) whose [tool.squeezebench.gate] holds the tolerances. "
                        "Default: ./pyproject.toml when it has that table, else the built-in tolerances")
    c.add_argument("--top1-tol", type=float, default=None,
                   help=f"allowed top-1 drop in percentage points. Default: config, else {DEFAULTS['top1_tol']}")
    c.add_argument("--size-tol", type=float, default=None,
                   help="allowed relative growth of artifact_bytes/compressed_bytes. "
                        f"Default: config, else {DEFAULTS['size_tol']}")
    c.add_argument("--latency-tol", type=float, default=None,
                   help="allowed normalised slowdown (and in-run ratio growth; absolute time with "
                        f"--gate-absolute). Default: config, else {DEFAULTS['latency_tol']}")
    c.add_argument("--latency-alpha", type=float, default=None,
                   help="significance level of the latency rank test. Default: config, else 0.001")
    c.add_argument("--latency", choices=("auto", "ratio", "off"), default="auto",
                   help="auto: rank test on blocks where both records have them, else in-run ratio; ratio: "
                        "in-run ratio only; off: latency not gated (histories of other machines, e.g. a "
                        "committed reference). Default: auto")
    c.add_argument("--energy-tol", type=float, default=None,
                   help=f"allowed relative growth of energy per image. Default: config, else {DEFAULTS['energy_tol']}")
    c.add_argument("--int8-share-tol", type=float, default=None,
                   help="allowed drop of the share of MACs run in int8. Default: config, else 0.05")
    c.add_argument("--gate-absolute", action="store_true",
                   help="also fail on absolute per-image time (same machine, quiet runs only). Default: off")
    c.add_argument("--allow-missing", action="store_true",
                   help="records of BASE absent from NEW are reported but do not fail. Default: off")
    c.add_argument("--baseline-backend", default="torch-cpu",
                   help="backend of the fp32 record in-run latency ratios divide by. Default: torch-cpu")
    c.add_argument("--latency-stat", choices=("median", "min", "mean"), default="median",
                   help="per-image statistic: median (rank test on blocks), or min (fastest round) / mean, "
                        "judged by in-run ratio. Default: median")
    c.add_argument("--quiet", action="store_true", help="print only regressions, missing records and the verdict")

    t = sub.add_parser("trend", help="each record's metric across the saved runs of one machine, in commit "
                                     "order, with the gate's verdicts: a table and a plot per machine")
    t.add_argument("histories", nargs="*", metavar="HISTORY",
                   help="pytest-benchmark JSON files or directories (every NNNN_*.json in them). Default: .benchmarks")
    t.add_argument("--metric", default="per_image_us",
                   help="per_image_us, top1, artifact_bytes, compressed_bytes, int8_share, energy_cpu_j_per_image "
                        "or energy_gpu_j_per_image. Default: per_image_us")
    t.add_argument("--match", default="*", help="glob over record ids (model-dataset-variant-backend-bN). Default: *")
    t.add_argument("--config", default=None, help="TOML with [tool.squeezebench.gate] for the verdicts. "
                                                  "Default: ./pyproject.toml when it has the table")
    t.add_argument("-o", "--output", type=Path, default=Path("reports/out"),
                   help="directory for trend_<machine>.png. Default: reports/out")
    return p


def _one(path: str | None) -> "History":  # noqa: F821
    paths = expand_paths([path] if path else [])
    if len(paths) != 1:
        raise HistoryError(f"{path or '.benchmarks'}: expected one history, found {len(paths)} "
                           f"({', '.join(map(str, paths[:4]))}{'...' if len(paths) > 4 else ''}); name a file")
    if paths[0].is_dir():
        raise HistoryError(f"{paths[0]}: no pytest-benchmark history (NNNN_*.json) in this directory")
    return load_history(paths[0])


def _histories(args) -> list:
    hs = load_histories(args.histories, every=getattr(args, "every", False))
    if not hs:
        print("reports: no readable history; nothing to report", file=sys.stderr)
    return hs


def cmd_summary(args) -> int:
    from squeezebench.reports.render import machine_runs, machines_table, side_by_side_table

    hs = _histories(args)
    if not hs:
        return 2
    runs = machine_runs(hs)
    print(machines_table(runs).text())
    print(side_by_side_table(runs).text())
    return 0


def cmd_machines(args) -> int:
    from squeezebench.reports.machines import machines_report

    hs = load_histories(args.histories, every=True)  # every run: the header counts runs and dates
    if not hs:
        print("reports: no readable history; nothing to report", file=sys.stderr)
        return 2
    text = machines_report(hs, fmt_=args.format)
    return _emit(text, args.output)


def cmd_speedups(args) -> int:
    from squeezebench.reports.render import machine_runs, speedup_table

    try:
        h = _one(args.history)
        batches = tuple(int(b) for b in args.batches.split(","))
    except HistoryError as e:
        print(f"reports: {e}", file=sys.stderr)
        return 2
    except ValueError:
        print(f"reports: --batches must be a comma list of integers, got {args.batches!r}", file=sys.stderr)
        return 2
    t = speedup_table(machine_runs([h])[0], batches)
    sys.stdout.write(t.markdown(2) if args.format == "markdown" else t.text())
    return 0


def cmd_paper(args) -> int:
    from squeezebench.reports import paper

    try:
        h = _one(args.history)
    except HistoryError as e:
        print(f"reports: {e}", file=sys.stderr)
        return 2
    tables = [int(t) for t in args.tables.split(",")] if args.tables else None
    ts = paper.paper_tables(h, backend=args.backend, batch=args.batch, tables=tables)
    pre = paper.preamble(h, args.backend, args.batch)
    if args.format == "markdown":
        text = "# The study's tables, measured by us\n\n" + "\n".join(f"- {p}" for p in pre) + "\n\n" + \
               "\n".join(t.markdown(2) for t in ts)
    elif args.format == "text":
        text = "\n".join(pre) + "\n\n" + "\n".join(t.text() for t in ts)
    else:
        from squeezebench.reports.render import CSS
        import html

        text = (f"<!DOCTYPE html><html><head><meta charset='utf-8'><style>{CSS}</style></head><body>"
                "<h1>The study's tables, measured by us</h1><ul>" + "".join(f"<li>{html.escape(p)}</li>" for p in pre)
                + "</ul>" + "\n".join(t.html(2) for t in ts) + "</body></html>")
    return _emit(text, args.output)


def cmd_plots(args) -> int:
    from squeezebench.reports.plots import all_plots, invalid_left_out
    from squeezebench.reports.render import machine_runs

    hs = _histories(args)
    if not hs:
        return 2
    runs = machine_runs(hs)
    n = 0
    for run in runs:
        plots = all_plots(run.records, args.output, f"{run.short.lower()}_" if len(runs) > 1 else "")
        for p in plots:
            print(f"{p.png}  {p.svg.name if p.svg else ''}  {p.title}")
        n += len(plots)
        if invalid_left_out(run.records):
            print(f"note ({run.short}): {invalid_left_out(run.records)}")
    print(f"{n} plots in {args.output}")
    return 0


def cmd_report(args) -> int:
    from squeezebench.reports import render

    hs = _histories(args)
    if not hs:
        return 2
    kw = {"backend": args.backend, "batch": args.batch, "with_paper": not args.no_paper}
    if args.view == "markdown":
        path = render.markdown(hs, args.output, embed=args.embed, **kw)
    else:
        path = render.html_report(hs, args.output, budget_pp=args.budget_pp, **kw)
    print(f"wrote {path}")
    return 0


def cmd_compare(args) -> int:
    from squeezebench.reports.compare import INVALID, MISSING, REGRESSED, compare_runs

    from squeezebench.config import ConfigFileError
    from squeezebench.reports.gate import pooled

    try:
        base = pooled([_one(x) for x in args.base.split(",")])
        new = pooled([_one(x) for x in args.new.split(",")])
    except HistoryError as e:
        print(f"reports: {e}", file=sys.stderr)
        return 2
    try:
        policy = _gate_policy(args, {"top1_tol": args.top1_tol, "size_tol": args.size_tol,
                                     "latency_tol": args.latency_tol, "energy_tol": args.energy_tol,
                                     "latency_alpha": args.latency_alpha, "int8_share_tol": args.int8_share_tol})
    except (ConfigFileError, ValueError) as e:
        print(f"reports: {e}", file=sys.stderr)
        return 2
    res = compare_runs(base, new, policy=policy, gate_absolute=args.gate_absolute,
                       ratio_backend=args.baseline_backend, latency_stat=args.latency_stat, latency=args.latency)
    print(f"BASE {base.path} ({base.machine.label}, commit {base.commit})")
    print(f"NEW  {new.path} ({new.machine.label}, commit {new.commit})")
    for note in res.notes:
        print(f"note: {note}")
    t = res.table()
    if args.quiet:
        t.rows = [r for r in t.rows if r[-1] in (REGRESSED, MISSING, INVALID)]
    if t.rows:
        print(t.text())
    for c in res.invalid:  # one line per failed measurement, whatever --quiet hides
        print(f"INVALID in NEW: {c.record}: {c.new.removeprefix('INVALID: ')}")
    failed = res.failed(args.allow_missing)
    print(f"{len(res.regressions)} regressed, {len(res.invalid)} invalid in NEW, {len(res.missing)} missing in NEW"
          f"{' (allowed)' if args.allow_missing and res.missing else ''}, {len(res.added)} new in NEW; "
          f"{res.compared} records compared, {res.unchanged} identical"
          + (f", {len(res.invalid_base)} invalid in BASE (not baselines)" if res.invalid_base else "")
          + f" -> {'FAIL' if failed else 'PASS'}")
    return 1 if failed else 0


def _gate_policy(args, overrides: dict | None = None):
    from squeezebench.config import load_config
    from squeezebench.reports.gate import GatePolicy

    cfg = load_config(args.config, rootdir=None if args.config else Path.cwd())
    return GatePolicy.from_config(cfg.gate, overrides)


def cmd_trend(args) -> int:
    from squeezebench.config import ConfigFileError
    from squeezebench.reports.history import group_by_machine
    from squeezebench.reports.plots import _slug
    from squeezebench.reports.trend import plot, table, trend

    hs = load_histories(args.histories, every=True)
    if not hs:
        print("reports: no readable history; nothing to report", file=sys.stderr)
        return 1
    try:
        policy = _gate_policy(args)
    except (ConfigFileError, ValueError) as e:
        print(f"reports: {e}", file=sys.stderr)
        return 2
    for key, runs in group_by_machine(hs).items():
        try:
            t = trend(runs, args.metric, args.match, policy)
        except ValueError as e:
            print(f"reports: {e}", file=sys.stderr)
            return 2
        print(f"machine: {runs[0].machine.label}: {len(runs)} runs")
        if not t.ids:
            print(f"  no record matches {args.match!r}")
            continue
        print(table(t).text())
        png = plot(t, args.output / f"trend_{_slug(runs[0].machine.label)[:60]}_{args.metric}.png")
        print(f"plot: {png}")
    return 0


def main(argv: list[str] | None = None, prog: str = "squeezebench") -> int:
    args = _parser(prog).parse_args(argv)
    handlers = {"summary": cmd_summary, "machines": cmd_machines, "speedups": cmd_speedups, "paper": cmd_paper, "plots": cmd_plots, "markdown": cmd_report,
                "html": cmd_report, "compare": cmd_compare, "trend": cmd_trend}
    try:
        return handlers[args.view](args)
    except BrokenPipeError:  # `python -m reports paper | head`
        return 0


def _emit(text: str, output: Path | None) -> int:
    """``text`` to ``output`` (its folder made), else to stdout."""
    if output:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(text, encoding="utf-8")
        print(f"wrote {output}")
    else:
        sys.stdout.write(text)
    return 0
