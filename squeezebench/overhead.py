"""Harness overhead: the per-image latency squeezebench reports vs a bare loop over the same call.

    python -m squeezebench.overhead [--model lenet300_100 --dataset mnist --batches 1,256]

For each backend and batch it (1) runs the benchmark suite for those records in a subprocess
(pytest bench/ --benchmark-json) and (2) in this process loads the same cached artifact, warms
up, and times ``session.run(prepared)`` in a bare ``perf_counter`` loop for the same wall time;
then prints reported/bare median per image. Run it on an idle machine.

    python -m squeezebench.overhead --floor [--batches 1]

times instead a near-empty model (``mlp_student`` with one hidden unit: 784-1-10, 805 weights)
on each backend: roughly the runtime's own per-call cost at that batch. A speedup over a model that
already runs close to it is bounded by it, not by the compression. It is measured in this process,
not inside pytest bench/, so compare it with records of the same machine and read it as indicative
(here torch eager measured higher in this process than a 784-50-10 MLP did inside the benchmarks).
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

import torch

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


def floor_us(backends: list[str], batches: list[int], seconds: float, threads: int) -> dict:
    """Per-image median of a near-empty model (784-1-10 MLP, untrained) per backend and batch."""
    from squeezebench.models import create_model
    from squeezebench.backends import get_backend, get_exporter
    from squeezebench.backends.base import Artifact, BackendUnavailable
    from squeezebench.domain import Variant

    shape, classes = (1, 28, 28), 10
    model = create_model("mlp_student", shape, classes, hidden=1).eval()
    arch = {"model": "mlp_student", "in_shape": list(shape), "num_classes": classes,
            "kwargs": {"hidden": 1}, "dtype": "float32"}
    floor = Variant("mlp_student", "none", "floor", model, arch, key={})
    x = torch.zeros(max(batches), *shape)
    out: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        artifacts: dict[str, Artifact] = {}
        for name in backends:
            cls = get_backend(name)
            reason = cls.unavailable_reason()
            if reason is not None:
                out[name] = reason
                continue
            fmt = cls.artifact_format
            if fmt not in artifacts:  # each format written once, by its backend's exporter
                exporter, d = get_exporter(fmt), Path(tmp) / fmt
                d.mkdir()
                main = exporter.writer(floor)(floor, d)
                artifacts[fmt] = Artifact(fmt, d / main, exporter.files(d, main))
            try:
                session = cls(threads).load(artifacts[fmt])
            except BackendUnavailable as e:
                out[name] = str(e)
                continue
            out[name] = {b: bare_loop_us(session, session.prepare(x[:b]), b, seconds) for b in batches}
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="lenet300_100", help="default: lenet300_100")
    ap.add_argument("--dataset", default="mnist", help="default: mnist")
    ap.add_argument("--backends", default="torch-cpu,onnxruntime,openvino",
                    help="default: torch-cpu,onnxruntime,openvino")
    ap.add_argument("--batches", default="1,256", help="default: 1,256")
    ap.add_argument("--seconds", type=float, default=2.0, help="bare-loop time per record; default: 2.0")
    ap.add_argument("--floor", action="store_true",
                    help="time a near-empty 784-1-10 MLP per backend instead (roughly the runtime's own "
                         "per-call cost); default: off")
    ap.add_argument("--threads", type=int, default=None,
                    help="intra-op threads for --floor; default: as the benchmarks (every core)")
    args = ap.parse_args(argv)
    if args.floor:
        from squeezebench.settings import resolve_settings

        args.threads = args.threads or resolve_settings().threads
        res = floor_us(args.backends.split(","), [int(b) for b in args.batches.split(",")], args.seconds,
                       args.threads)
        print(f"{'backend':<12} {'batch':>5} {'floor us/img':>13}   (784-1-10 MLP, {args.threads} thread(s))")
        for backend, r in res.items():
            if isinstance(r, str):
                print(f"{backend:<12} {'-':>5} {'skipped':>13}   {r}")
                continue
            for batch, us in r.items():
                print(f"{backend:<12} {batch:>5} {us:>13.3f}")
        return 0

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
