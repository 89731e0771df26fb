"""Evidence for the build phase (issue 14), on this machine, quiet:

1. the profile built in this process, on a 1-node Ray cluster (1 CPU) and on a 2-node Ray cluster
   (ray.cluster_utils.Cluster: two raylets of 1 CPU each on this box), each into a fresh cache, at
   one thread per task; wall times, per-task seconds, and the entries compared file by file;
2. Ray's own cost: a no-op task's round trip, and (1-node Ray wall - in-process wall) per task;
3. the scaling model (squeezebench.build.simulate_wall) from the measured task seconds;
4. the cache round trip: --sb-measure-only on a fresh local cache filled only from the shared
   cache the 2-node build published to, against a normal run's evaluations;
5. a worker node killed mid-build (its raylet, not gracefully): the build still completes, and its
   entries equal the in-process ones.

    SQUEEZEBENCH_DATA_DIR=../shared/data .venv/bin/python .ci/build_scaling.py --out /tmp/ev/scaling
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from squeezebench.build import BuildTask, critical_path, simulate_wall  # noqa: E402
from squeezebench.cache import ArtifactCache  # noqa: E402


def inventory(root: Path) -> dict[str, dict[str, str]]:
    return ArtifactCache(root).inventory()


def build(out: Path, name: str, select: list[str], extra: list[str]) -> dict:
    cache, js = out / f"cache-{name}", out / f"build-{name}.json"
    cmd = [sys.executable, "-m", "pytest", "bench/", "-q", "-p", "no:cacheprovider", *select, "--sb-build-only",
           "--sb-cache-dir", str(cache), f"--sb-build-json={js}", *extra]
    t0 = time.perf_counter()
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    (out / f"build-{name}.log").write_text(r.stdout + r.stderr)
    if r.returncode != 0:
        raise SystemExit(f"{name}: rc {r.returncode}\n{(r.stdout + r.stderr)[-3000:]}")
    doc = json.loads(js.read_text())
    doc["process_wall_s"] = wall
    print(f"{name}: {len(doc['done'])} tasks in {doc['wall_s']:.1f}s (process {wall:.1f}s)", flush=True)
    return doc


def noop_overhead(address: str, n: int = 200) -> dict:
    import ray

    ray.init(address=address, logging_level="ERROR", log_to_driver=False)

    @ray.remote(num_cpus=1)
    def noop(x):
        return x

    ray.get([noop.remote(i) for i in range(20)])  # warm workers
    t0 = time.perf_counter()
    for i in range(n):
        ray.get(noop.remote(i))
    serial = (time.perf_counter() - t0) / n
    t0 = time.perf_counter()
    ray.get([noop.remote(i) for i in range(n)])
    batch = (time.perf_counter() - t0) / n
    ray.shutdown()
    return {"serial_round_trip_ms": serial * 1e3, "throughput_ms_per_task": batch * 1e3, "n": n}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--profile", default="paper")
    ap.add_argument("--reference-cache", type=Path, default=None,
                    help="a normal (pytest, in-process) run's cache at the same threads, for the round trip")
    ap.add_argument("--skip", default="", help="comma list of steps to skip: inproc,ray1,ray2,roundtrip,kill")
    a = ap.parse_args()
    from ray.cluster_utils import Cluster

    a.out.mkdir(parents=True, exist_ok=True)
    skip = set(a.skip.split(","))
    select = ["--sb-profile", a.profile, "--sb-threads", "1"]
    res: dict = {"profile": a.profile}
    docs = {}
    if "inproc" not in skip:
        docs["inproc"] = build(a.out, "inproc", select, [])
    for name, nodes in (("ray1", 1), ("ray2", 2)):
        if name in skip:
            continue
        cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
        for _ in range(nodes - 1):
            cluster.add_node(num_cpus=1)
        try:
            extra = ["--sb-ray-address", cluster.address]
            if name == "ray2":
                extra += ["--sb-shared-cache", str(a.out / "shared")]
            docs[name] = build(a.out, name, select, extra)
            if name == "ray2":
                res["noop"] = noop_overhead(cluster.address)
        finally:
            cluster.shutdown()
    for k, d in docs.items():
        res[k] = {"wall_s": d["wall_s"], "process_wall_s": d["process_wall_s"], "tasks": len(d["done"]),
                  "failed": d["failed"], "task_seconds": sum(t["seconds"] for t in d["done"]),
                  "nodes": sorted({t["node"] for t in d["done"]}), "pids": len({t["pid"] for t in d["done"]})}
    inv = {k: inventory(a.out / f"cache-{k}") for k in docs}
    if a.reference_cache:
        inv["reference"] = inventory(a.reference_cache)
    base = inv.get("inproc") or inv.get("reference")
    res["identical"] = {k: {"entries": len(v), "same_entries": set(v) == set(base),
                            "different_files": sum(v[e] != base[e] for e in v if e in base)} for k, v in inv.items()}
    if "inproc" in docs and "ray1" in docs:
        n = len(docs["inproc"]["done"])
        res["ray_overhead_per_task_s"] = (docs["ray1"]["wall_s"] - docs["inproc"]["wall_s"]) / n
    # The scaling model from the in-process run's task seconds (one thread each, nothing else running).
    src = docs.get("inproc") or docs.get("ray1")
    if src:
        tasks = [BuildTask(**{**t, "backends": tuple(t["backends"]), "after": tuple(t["after"])}) for t in src["tasks"]]
        secs = {t["task"]: t["seconds"] for t in src["done"]}
        cp, path = critical_path(tasks, secs)
        ov = max(0.0, res.get("ray_overhead_per_task_s", 0.0))
        res["model"] = {"critical_path_s": cp, "critical_path": path, "sum_s": sum(secs.values()),
                        "by_workers": {w: simulate_wall(tasks, secs, w, ov) for w in (1, 2, 3, 4, 6, 8, 16, 32)}}
        res["slowest_tasks"] = sorted(secs.items(), key=lambda kv: -kv[1])[:12]
    if "roundtrip" not in skip and (a.out / "shared").exists():
        fresh = a.out / "cache-target"
        cmd = [sys.executable, "-m", "pytest", "bench/", "-q", "-p", "no:cacheprovider", *select, "--sb-measure-only",
               "--sb-shared-cache", str(a.out / "shared"), "--sb-cache-dir", str(fresh), "--benchmark-disable"]
        t0 = time.perf_counter()
        r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
        (a.out / "measure-only.log").write_text(r.stdout + r.stderr)
        tail = (r.stdout + r.stderr).strip().splitlines()[-1]
        evals = {}
        for name, root in (("target", fresh), ("reference", a.reference_cache)):
            if root and (root / "evaluations").exists():
                evals[name] = {m.parent.name: json.loads((m.parent / "evaluation.json").read_text())
                               for m in (root / "evaluations").glob("*/MANIFEST.json")}
        same = None
        if len(evals) == 2:
            common = set(evals["target"]) & set(evals["reference"])
            same = {"target": len(evals["target"]), "reference": len(evals["reference"]), "common_keys": len(common),
                    "different": sum(evals["target"][k]["top1"] != evals["reference"][k]["top1"] for k in common)}
        res["roundtrip"] = {"rc": r.returncode, "summary": tail, "seconds": time.perf_counter() - t0,
                            "built_here": sorted(set(inventory(fresh)) - set(inventory(a.out / "shared"))),
                            "evaluations": same}
        print("roundtrip:", res["roundtrip"]["summary"], flush=True)
    if "kill" not in skip:
        cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
        worker = cluster.add_node(num_cpus=1)
        killed = {}

        def kill_later():
            time.sleep(25)
            killed["at_s"] = 25
            cluster.remove_node(worker, allow_graceful=False)  # its raylet and workers, SIGKILL

        th = threading.Thread(target=kill_later)
        th.start()
        try:
            d = build(a.out, "kill", [*select, "-k", "mnist"], ["--sb-ray-address", cluster.address])
        finally:
            th.join()
            cluster.shutdown()
        kinv = inventory(a.out / "cache-kill")
        res["kill"] = {"tasks": len(d["done"]), "failed": d["failed"], "wall_s": d["wall_s"], **killed,
                       "entries": len(kinv), "different_from_inproc": sum(kinv[e] != base.get(e) for e in kinv),
                       "pids": len({t["pid"] for t in d["done"]})}
        print("kill:", res["kill"], flush=True)
    (a.out / "scaling.json").write_text(json.dumps(res, indent=1, default=str))
    print(json.dumps({k: v for k, v in res.items() if k not in ("slowest_tasks",)}, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
