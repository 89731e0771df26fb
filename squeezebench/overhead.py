"""Harness overhead: the per-image latency squeezebench reports vs a bare loop over the same call.

    python -m squeezebench.overhead [--model lenet300_100 --dataset mnist --batches 1,256]

For each backend and batch it (1) runs the benchmark suite for those records in a subprocess
(pytest bench/ --benchmark-json) and (2) in this process loads the same cached artifact, warms
up, and times ``session.run(prepared)`` in a bare ``perf_counter`` loop for the same wall time;
then prints reported/bare median per image. Run it on an idle machine.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def bare_loop_us(session, prepared, batch: int, seconds: float) -> float:
    for _ in range(max(3, int(0.25 / max(seconds, 1e-9)))):
        session.run(prepared)
    times = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end or len(times) < 20:
        t0 = time.perf_counter()
        session.run(prepared)
        times.append(time.perf_counter() - t0)
    return statistics.median(times) / batch * 1e6


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="lenet300_100", help="default: lenet300_100")
    ap.add_argument("--dataset", default="mnist", help="default: mnist")
    ap.add_argument("--backends", default="torch-cpu,onnxruntime,openvino",
                    help="default: torch-cpu,onnxruntime,openvino")
    ap.add_argument("--batches", default="1,256", help="default: 1,256")
    ap.add_argument("--seconds", type=float, default=2.0, help="bare-loop time per record; default: 2.0")
    args = ap.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run.json"
        cmd = [sys.executable, "-m", "pytest", "bench/", "-q", "-p", "no:cacheprovider",
               "--sb-models", args.model, "--sb-datasets", args.dataset, "--sb-variants", "fp32",
               "--sb-backends", args.backends, "--sb-batches", args.batches,
               f"--benchmark-json={out}", f"--benchmark-max-time={args.seconds}"]
        subprocess.run(cmd, cwd=ROOT, check=True, env=os.environ.copy())
        reported = {(b["extra_info"]["backend"], b["extra_info"]["batch"]): b["extra_info"]["per_image_us"]
                    for b in json.loads(out.read_text())["benchmarks"]}

    from squeezebench.settings import resolve_settings
    from squeezebench.workbench import Workbench

    wb = Workbench(resolve_settings())
    v = wb.variant(args.model, args.dataset, "fp32")
    data = wb.dataset(args.dataset)
    print(f"\n{'backend':<12} {'batch':>5} {'reported us/img':>16} {'bare us/img':>12} {'ratio':>6}")
    worst = 0.0
    for (backend, batch), rep in sorted(reported.items()):
        s = wb.session(v, backend)
        prepared = s.prepare(data.normalize(data.x_test[:batch]))
        bare = bare_loop_us(s, prepared, batch, args.seconds)
        ratio = rep / bare
        worst = max(worst, ratio)
        print(f"{backend:<12} {batch:>5} {rep:>16.3f} {bare:>12.3f} {ratio:>6.3f}")
    print(f"worst reported/bare ratio: {worst:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
