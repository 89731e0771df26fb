"""Measure the latency gate's power on this machine (issue 12): false alarms of a commit against
itself, and detection of planted slowdowns at batch 1 and batch 256, for the gate as CI runs it
(`.ci/ab`: AB_ROUNDS runs per side, interleaved, blocks pooled).

    .venv/bin/python .ci/gate_power.py --runs 20 --out .ci/out/power

One "gate run" is ROUNDS unplanted runs (A) interleaved with ROUNDS planted runs (P): A P A P ...
Every P run plants three slowdowns at once, each in its own pair of records (batch 1 and 256),
through tests/planted.py (a wrapper of the ONNX Runtime backend that busy-waits the fraction of
each call's own time): PLANTS below. Then, per gate run i:
- planted: pooled A_i against pooled P_i; a fraction is caught at a batch size when its record
  is REGRESSED; any other record REGRESSED is a false alarm;
- A vs A: pooled A_i against pooled A_{i+1} (so ``--runs`` + 1 A groups are run).
With ``--confirm`` (the default, as ``.ci/ab``'s AB_CONFIRM=1), a gate run that fails is judged
again as CI does: ROUNDS more runs per side, interleaved, pooled with the first ones; the tables
give the verdicts before and after. Planting three records at once (6 of 16) biases the
machine-speed factor up by a little, which makes the planted results slightly conservative. Writes every history, ``power.json`` (each
record's normalised ratio and p, to re-judge with other tolerances) and ``power.md`` under
``--out``. Needs a quiet machine: nothing else may run meanwhile.
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
from squeezebench.reports.compare import compare_runs  # noqa: E402
from squeezebench.reports.gate import GatePolicy, latency_test, machine_factor, pooled, record_id  # noqa: E402
from squeezebench.reports.history import History, load_history  # noqa: E402

AB_ARGS = (REPO / ".ci" / "ab_args").read_text().split()
PLANTS = {0.1: "lenet300_100-mnist-fp32-onnxruntime-b*", 0.2: "lenet5-mnist-fp32-onnxruntime-b*",
          0.5: "lenet5-mnist-int8-static-onnxruntime-b*"}


def bench(out: Path, plant: str) -> History:
    env = {**os.environ, "PYTHONPATH": str(REPO / "tests"), "SQUEEZEBENCH_PLANT": plant}
    cmd = [sys.executable, "-m", "pytest", "bench/", "-q", "-p", "no:cacheprovider", "-p", "planted",
           *AB_ARGS, f"--benchmark-json={out}"]
    r = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"benchmark run failed ({out.name}):\n{r.stdout[-3000:]}\n{r.stderr[-2000:]}")
    return load_history(out)


def judge(a: History, b: History, policy: GatePolicy) -> dict:
    res = compare_runs(a, b, policy=policy)
    regressed = {c.record for c in res.regressions if c.metric.startswith("latency")}
    other = [f"{c.record}: {c.metric} {c.change}" for c in res.regressions]
    ids = {r.label: record_id(r) for r in a.records}
    pairs = [(x, b.by_key()[x.key]) for x in a.records if x.key in b.by_key()]
    f = machine_factor(pairs).value
    every = {}
    for x, y in pairs:
        t = latency_test(x, y, f)
        if t is not None:
            every[record_id(x)] = [round(t.ratio, 5), float(f"{t.p_slower:.3g}")]
    return {"regressed": sorted(ids[label] for label in regressed), "alarms": other, "factor": f,
            "every_record": every}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=20, help="gate runs per condition. Default: 20")
    ap.add_argument("--rounds", type=int, default=int(os.environ.get("AB_ROUNDS", "3")),
                    help="runs per side in one gate run, as .ci/ab. Default: AB_ROUNDS or 3")
    ap.add_argument("--out", type=Path, default=REPO / ".ci" / "out" / "power", help="Default: .ci/out/power")
    ap.add_argument("--no-confirm", dest="confirm", action="store_false",
                    help="judge each gate run once, without .ci/ab's confirmation rounds. Default: confirm")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    policy = GatePolicy.from_config(load_config(REPO / "pyproject.toml").gate)
    plant = ",".join(f"{glob}={f}" for f, glob in PLANTS.items())
    t0 = time.time()
    a_runs: list[list[History]] = []  # the ROUNDS unplanted runs of each group
    aa: list[dict] = []  # per gate run: {"first": verdict, "final": verdict after confirmation}
    pl: list[dict] = []

    def confirm(base: list[History], new: list[History], tag: str, new_plant: str, first: dict) -> dict:
        """The gate's verdict after .ci/ab's confirmation: more rounds per side when it failed."""
        if not args.confirm or not first["alarms"]:
            return first
        base, new = list(base), list(new)
        for k in range(args.rounds):
            base.append(bench(args.out / f"{tag}_cb{k}.json", ""))
            new.append(bench(args.out / f"{tag}_cn{k}.json", new_plant))
        return judge(pooled(base), pooled(new), policy)

    for i in range(args.runs + 1):
        a, p = [], []
        for k in range(args.rounds):
            a.append(bench(args.out / f"a{i:02d}_{k}.json", ""))
            if i < args.runs:
                p.append(bench(args.out / f"p{i:02d}_{k}.json", plant))
        a_runs.append(a)
        if p:
            first = judge(pooled(a), pooled(p), policy)
            pl.append({"first": first, "final": confirm(a, p, f"p{i:02d}", plant, first)})
        if i > 0:
            first = judge(pooled(a_runs[i - 1]), pooled(a), policy)
            aa.append({"first": first, "final": confirm(a_runs[i - 1], a, f"aa{i:02d}", "", first)})
        print(f"gate run {i + 1}/{args.runs + 1} measured ({time.time() - t0:.0f} s)", flush=True)

    targets = {(f, n): glob.replace("b*", f"b{n}") for f, glob in PLANTS.items() for n in (1, 256)}
    out = {"runs": args.runs, "rounds": args.rounds, "confirm": args.confirm,
           "plants": {str(f): g for f, g in PLANTS.items()}, "ab_args": AB_ARGS,
           "seconds": round(time.time() - t0), "policy": str(policy), "a_vs_a": aa, "planted": pl}
    (args.out / "power.json").write_text(json.dumps(out, indent=1))

    n = args.runs
    planted_ids = set(targets.values())
    passes = ["first", "final"] if args.confirm else ["first"]
    heads = {"first": "first judgement", "final": "after confirmation"}
    lines = [f"# Gate power: {n} gate runs per condition, {args.rounds} runs per side pooled"
             f"{', failures confirmed on as many more' if args.confirm else ''} ({out['seconds']} s)", "",
             f"Tolerances: {policy}", "",
             "| condition | " + " | ".join(f"b{b} caught ({heads[s]})" for s in passes for b in (1, 256)) + " |",
             "|---|" + "---|" * (2 * len(passes))]
    for f in PLANTS:
        lines.append(f"| +{f:.0%} planted | " + " | ".join(
            f"{sum(targets[(f, b)] in r[s]['regressed'] for r in pl)}/{n}" for s in passes for b in (1, 256)) + " |")
    for s in passes:
        aa_fail = sum(1 for r in aa if r[s]["alarms"])
        pl_other = sum(1 for r in pl if set(r[s]["regressed"]) - planted_ids)
        lines += ["", f"A vs A ({heads[s]}): {aa_fail}/{n} gate runs failed ({sum(len(r[s]['alarms']) for r in aa)} "
                      f"alarms in all); planted runs with an alarm on an unplanted record: {pl_other}/{n}"]
    lines += ["", "A-vs-A normalised ratio (pooled NEW / pooled BASE / machine factor, first judgement), "
                  "over every record and run:", ""]
    for b in (1, 256):
        r = np.array([v[0] for x in aa for k, v in x["first"]["every_record"].items() if k.endswith(f"-b{b}")])
        lines.append(f"- b{b}: 95th percentile of |change| {np.percentile(np.abs(r - 1), 95):.1%}, "
                     f"99th {np.percentile(np.abs(r - 1), 99):.1%}, max {np.max(np.abs(r - 1)):.1%} ({len(r)} ratios)")
    last = passes[-1]
    lines += ["", f"Minimum detectable regression ({heads[last]}; smallest planted fraction caught in >= 19 of 20 "
                  "gate runs):", ""]
    for b in (1, 256):
        ok = [f for f in PLANTS if sum(targets[(f, b)] in r[last]["regressed"] for r in pl) >= 0.95 * n]
        lines.append(f"- b{b}: {min(ok):.0%}" if ok else f"- b{b}: above {max(PLANTS):.0%}")
    alarms = [f"{a} ({s})" for r in aa for s in passes for a in r[s]["alarms"]]
    if alarms:
        lines += ["", "A-vs-A alarms:", ""] + [f"- {a}" for a in alarms]
    (args.out / "power.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
