"""Measure the latency gate's power on this machine (issue 12): false alarms of a commit against
itself, and detection of planted slowdowns of one record at batch 1 and one at batch 256.

    .venv/bin/python .ci/gate_power.py --runs 20 --out .ci/out/power

Each round runs the A/B gate's records (AB_ARGS, the same as `.ci/ab`) once unplanted and once per
planted fraction, interleaved, through tests/planted.py (a wrapper of the ONNX Runtime backend that
busy-waits the fraction of each call's own time in the records matching PLANT_ID). Then:
- A vs A: unplanted run i against unplanted run i+1 (``--runs`` comparisons, ``--runs``+1 runs);
- planted: unplanted run i against planted run i, per fraction; caught when the target record of
  that batch size is REGRESSED; any other record REGRESSED counts as a false alarm.
Writes every history, ``power.json`` and ``power.md`` (the tables) under ``--out``. Needs a quiet
machine: nothing else may run meanwhile.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from squeezebench.config import load_config  # noqa: E402
from squeezebench.reports.compare import REGRESSED, compare_runs  # noqa: E402
from squeezebench.reports.gate import GatePolicy, latency_test, machine_factor, record_id  # noqa: E402
from squeezebench.reports.history import load_history  # noqa: E402

AB_ARGS = (REPO / ".ci" / "ab_args").read_text().split()
PLANT_ID = "lenet5-mnist-fp32-onnxruntime-b*"
TARGETS = {1: ("lenet5", "mnist", "fp32", "onnxruntime", 1), 256: ("lenet5", "mnist", "fp32", "onnxruntime", 256)}


def bench(out: Path, fraction: float) -> Path:
    env = {**os.environ, "PYTHONPATH": str(REPO / "tests"), "SQUEEZEBENCH_PLANT_FRACTION": str(fraction),
           "SQUEEZEBENCH_PLANT_ID": PLANT_ID}
    cmd = [sys.executable, "-m", "pytest", "bench/", "-q", "-p", "no:cacheprovider", "-p", "planted",
           *AB_ARGS, f"--benchmark-json={out}"]
    r = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"benchmark run failed ({out.name}):\n{r.stdout[-3000:]}\n{r.stderr[-2000:]}")
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=20, help="comparisons per condition. Default: 20")
    ap.add_argument("--fractions", default="0.1,0.2,0.5", help="planted slowdowns. Default: 0.1,0.2,0.5")
    ap.add_argument("--out", type=Path, default=REPO / ".ci" / "out" / "power", help="Default: .ci/out/power")
    args = ap.parse_args()
    fractions = [float(x) for x in args.fractions.split(",")]
    args.out.mkdir(parents=True, exist_ok=True)
    policy = GatePolicy.from_config(load_config(REPO / "pyproject.toml").gate)
    t0 = time.time()
    base, planted = [], {f: [] for f in fractions}
    for i in range(args.runs + 1):
        base.append(load_history(bench(args.out / f"base_{i:02d}.json", 0.0)))
        if i < args.runs:
            for f in fractions:
                planted[f].append(load_history(bench(args.out / f"plant{int(f * 100):02d}_{i:02d}.json", f)))
        print(f"round {i + 1}/{args.runs + 1} done ({time.time() - t0:.0f} s)", flush=True)

    def judge(a, b) -> dict:
        res = compare_runs(a, b, policy=policy)
        bad = [c for c in res.regressions]
        hit = {n: any(c.record == a.by_key()[k].label and c.metric.startswith("latency") for c in bad)
               for n, k in TARGETS.items()}
        others = [c for c in bad if not any(c.record == a.by_key()[k].label for k in TARGETS.values())]
        pairs = [(x, b.by_key()[x.key]) for x in a.records if x.key in b.by_key()]
        f = machine_factor(pairs).value
        ratios = {n: latency_test(a.by_key()[k], b.by_key()[k], f) for n, k in TARGETS.items()}
        every = {}
        for x, y in pairs:
            t = latency_test(x, y, f)
            if t is not None:
                every[record_id(x)] = [round(t.ratio, 5), float(f"{t.p_slower:.3g}")]
        return {"hit": hit, "other_alarms": [f"{c.record}: {c.metric} {c.change}" for c in others],
                "every_record": every,  # ratio and p of each record: re-judge offline with other tolerances
                "ratio": {n: (t.ratio if t else None) for n, t in ratios.items()},
                "p": {n: (t.p_slower if t else None) for n, t in ratios.items()}, "factor": f}

    aa = [judge(base[i], base[i + 1]) for i in range(args.runs)]
    out = {"runs": args.runs, "plant_id": PLANT_ID, "ab_args": AB_ARGS, "seconds": round(time.time() - t0),
           "a_vs_a": aa, "planted": {str(f): [judge(base[i], planted[f][i]) for i in range(args.runs)]
                                     for f in fractions}}
    (args.out / "power.json").write_text(json.dumps(out, indent=1))

    lines = [f"# Gate power: {args.runs} comparisons per condition ({out['seconds']} s)", "",
             "| condition | runs failing the gate | target b1 caught | target b256 caught | other alarms |",
             "|---|---|---|---|---|"]
    fails = sum(1 for r in aa if r["other_alarms"] or any(r["hit"].values()))
    lines.append(f"| A vs A | {fails}/{args.runs} | {sum(r['hit'][1] for r in aa)} (false) | "
                 f"{sum(r['hit'][256] for r in aa)} (false) | {sum(len(r['other_alarms']) for r in aa)} |")
    for f in fractions:
        rs = out["planted"][str(f)]
        lines.append(f"| +{f:.0%} planted | {sum(1 for r in rs if r['other_alarms'] or any(r['hit'].values()))}"
                     f"/{args.runs} | {sum(r['hit'][1] for r in rs)}/{args.runs} | "
                     f"{sum(r['hit'][256] for r in rs)}/{args.runs} | {sum(len(r['other_alarms']) for r in rs)} |")
    lines += ["", "A-vs-A normalised ratio of the target records (the noise a slowdown must clear):", ""]
    for n in TARGETS:
        r = np.array([x["ratio"][n] for x in aa if x["ratio"][n] is not None])
        lines.append(f"- b{n}: median {np.median(r) - 1:+.1%}, 95th percentile of |change| "
                     f"{np.percentile(np.abs(r - 1), 95):.1%}, max {np.max(np.abs(r - 1)):.1%}")
    lines += ["", "Minimum detectable regression (smallest planted fraction caught in >= 19 of 20):", ""]
    for n in TARGETS:
        ok = [f for f in fractions if sum(r["hit"][n] for r in out["planted"][str(f)]) >= 0.95 * args.runs]
        lines.append(f"- b{n}: {min(ok):.0%}" if ok else f"- b{n}: above {max(fractions):.0%}")
    other = [a for r in aa for a in r["other_alarms"]] + [a for f in fractions for r in out["planted"][str(f)]
                                                          for a in r["other_alarms"]]
    if other:
        lines += ["", "Alarms on records that were not planted:", ""] + [f"- {a}" for a in other]
    (args.out / "power.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
