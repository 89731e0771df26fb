"""The build phase (squeezebench.build): the plan's order, in-process and Ray builds giving the same
cache, a worker killed mid-entry, measure-only errors, and the one-line failures."""
from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest

from squeezebench.build import (
    BuildContext, BuildError, BuildTask, build_task, measure_only_guard, plan_build, run_in_process, start_ray,
)
from squeezebench.cache import ArtifactCache, CacheMiss
from squeezebench.profiles import Case
from squeezebench.settings import resolve_settings


def _cases(model: str, variants: list[str], backends=("torch-cpu", "onnxruntime"), dataset: str = "d") -> list[Case]:
    return [Case(model, dataset, v, b, n) for v in variants for b in backends for n in (1, 256)]


def test_plan_puts_baselines_and_chain_prefixes_first():
    cases = _cases("m", ["prune90+int8-static", "prune90", "kd-t4", "int8-static"]) + _cases("n", ["fp32"], ("openvino",))
    tasks = plan_build(cases)
    ids = [t.id for t in tasks]
    assert len(ids) == len(set(ids)) == 6  # one task per variant, fp32 of m added
    pos = {t.id: i for i, t in enumerate(tasks)}
    by = {t.id: t for t in tasks}
    assert by["m/d/fp32"].backends == () and by["n/d/fp32"].backends == ("openvino",)
    assert by["m/d/prune90+int8-static"].after == ("m/d/fp32", "m/d/prune90")
    assert by["m/d/kd-t4"].after == ("m/d/fp32",)
    assert by["m/d/prune90"].backends == ("torch-cpu", "onnxruntime")
    for t in tasks:
        assert all(pos[d] < pos[t.id] for d in t.after), t


def test_plan_depends_on_the_longest_prefix_present():
    tasks = {t.id: t for t in plan_build(_cases("m", ["a1+b2+c3", "a1", "a1+b2"]))}
    # the variant ids need not parse here: the plan only reads the chain's '+' structure
    assert tasks["m/d/a1+b2+c3"].after == ("m/d/fp32", "m/d/a1+b2")
    assert tasks["m/d/a1+b2"].after == ("m/d/fp32", "m/d/a1")


def test_in_process_reports_failures_and_skips_dependents(tmp_path):
    tasks = [BuildTask("m", "d", "fp32"), BuildTask("m", "d", "x", after=("m/d/fp32",)),
             BuildTask("m", "d", "y", after=("m/d/fp32",))]
    calls = []

    def fake(ctx, task, say=None):
        calls.append(task.id)
        if task.id == "m/d/fp32":
            raise RuntimeError("training diverged\nloss is nan")
        return {"task": task.id, "seconds": 0.0, "node": "n"}

    import squeezebench.build as b

    lines: list[str] = []
    real, b.build_task = b.build_task, fake
    try:
        r = run_in_process(BuildContext(None), tasks, say=lines.append)
    finally:
        b.build_task = real
    assert calls == ["m/d/fp32"]
    assert not r.ok and [f["task"] for f in r.failed] == ["m/d/fp32", "m/d/x", "m/d/y"]
    assert r.failed[0]["error"] == "loss is nan"
    assert "depends on m/d/fp32, which failed" in r.failed[1]["error"]
    assert "3 failed" in lines[-1] and "FAILED m/d/y" in r.summary()


def test_build_task_writes_each_backends_artifact_and_skips_what_cannot_run(tmp_path):
    """A real task of the engine on an image folder: the compact and ONNX artifacts land in the
    cache; a backend that cannot run the variant is skipped with its reason, not failed."""
    pytest.importorskip("onnxruntime")
    from test_options import _image_folder

    data = _image_folder(tmp_path / "imgs")
    settings = resolve_settings(data_dir=tmp_path / "data", cache_dir=tmp_path / "cache", threads=1)
    ctx = BuildContext(settings)
    ds = f"folder:{data}"
    build_task(ctx, BuildTask("lenet300_100", ds, "fp32", ("onnxruntime",)))
    r = build_task(ctx, BuildTask("lenet300_100", ds, "woq4", ("torch-cpu", "onnxruntime"), ("x",)))
    assert r["formats"] == ["compressed", "onnx"]
    assert "4-bit" in r["skipped"]["torch-cpu"]  # eager torch has no 4-bit weight-only kernels
    names = {ns for ns, _ in ArtifactCache(settings.cache_dir).entries()}
    assert {"trained", "artifacts/compressed", "artifacts/onnx"} <= names
    assert "evaluations" not in names  # building measures nothing


def test_measure_only_guard_names_the_build_command():
    guard = measure_only_guard("pytest bench/ --sb-profile paper --sb-build-only")
    assert guard("evaluations", {}) is None and guard("datasets", {}) is None
    msg = guard("artifacts/onnx", {})
    assert "no onnx artifact" in msg and msg.endswith("pytest bench/ --sb-profile paper --sb-build-only")
    assert "trained model" in guard("trained", {})


def test_cache_refuses_to_build_under_measure_only(tmp_path):
    cache = ArtifactCache(tmp_path)
    cache.forbid_build = measure_only_guard("squeezebench build")
    with pytest.raises(CacheMiss, match="squeezebench build"):
        cache.get_or_build("trained", {"a": 1}, lambda tmp: (tmp / "f").write_text("x") and None)
    assert cache.entries() == []


def test_unreachable_ray_address_is_one_message():
    with pytest.raises(BuildError, match=r"127\.0\.0\.1:1 is unreachable.*ray start --head"):
        start_ray(0, "127.0.0.1:1", 1)
    with pytest.raises(BuildError, match="is not host:port"):
        start_ray(0, "nonsense", 1)


# -- end to end through pytest ------------------------------------------------------------------------
def _inventory(root: Path) -> dict[str, dict[str, str]]:
    """Every built entry (not the evaluations: those are measurements) with its files' sha256."""
    return ArtifactCache(root).inventory()


SELECT = ("--sb-models", "lenet300_100", "--sb-variants", "fp32,int8-static,prune50+int8-dynamic",
          "--sb-backends", "torch-cpu,onnxruntime", "--sb-batches", "1", "--sb-threads", "1")


@pytest.mark.e2e
def test_build_only_then_measure_only_reads_what_was_built(tmp_path):
    """`--sb-build-only` fills the cache and times nothing; `--sb-measure-only` on an empty cache
    fails naming the build command, and on a cache filled only through the shared cache (a fresh
    local directory) runs the records and builds nothing."""
    pytest.importorskip("onnxruntime")
    from conftest import run_bench
    from test_options import _image_folder

    data = _image_folder(tmp_path / "imgs")
    sel = ("--sb-datasets", f"folder:{data}", *SELECT)
    shared = tmp_path / "shared"
    r, out = run_bench(*sel, "--sb-build-only", "--sb-shared-cache", str(shared), tmp_path=tmp_path / "builder")
    assert r.returncode == 0, out[-3000:]
    assert "build: 3 tasks done, 0 failed" in out and "passed" not in out
    built = _inventory(tmp_path / "builder" / "cache")
    assert built and _inventory(shared) == built  # every entry published
    assert not (tmp_path / "builder" / "cache" / "evaluations").exists()

    r, out = run_bench(*sel, "--sb-measure-only", "--benchmark-disable", tmp_path=tmp_path / "empty")
    assert r.returncode == 1, out[-3000:]
    assert "--sb-measure-only: no trained model in the cache" in out and "--sb-build-only" in out
    assert "Traceback" not in out and "During handling" not in out

    r, out = run_bench(*sel, "--sb-measure-only", "--sb-shared-cache", str(shared), "--sb-min-time", "0.05",
                       "--sb-warmup-time", "0.01", "--sb-energy-window", "0", f"--benchmark-json={tmp_path / 'm.json'}",
                       tmp_path=tmp_path / "target")
    assert r.returncode == 0, out[-3000:]
    assert _inventory(tmp_path / "target" / "cache") == built  # copied from the shared cache, nothing new
    recs = json.loads((tmp_path / "m.json").read_text())["benchmarks"]
    assert len(recs) >= 5 and all(b["extra_info"]["valid"] for b in recs)


@pytest.mark.e2e
def test_ray_build_gives_the_same_cache_as_in_process(tmp_path):
    """--sb-workers 2 (a local Ray, 2 slots of 1 CPU) builds entries byte-identical to the
    in-process build at the same thread count."""
    pytest.importorskip("ray")
    pytest.importorskip("onnxruntime")
    from conftest import run_bench
    from test_options import _image_folder

    data = _image_folder(tmp_path / "imgs")
    sel = ("--sb-datasets", f"folder:{data}", *SELECT, "--sb-build-only")
    r, out = run_bench(*sel, tmp_path=tmp_path / "a")
    assert r.returncode == 0, out[-3000:]
    r, out = run_bench(*sel, "--sb-workers", "2", tmp_path=tmp_path / "b")
    assert r.returncode == 0, out[-3000:]
    assert "on Ray (2 slots" in out and "build: 3 tasks done, 0 failed" in out
    a, b = _inventory(tmp_path / "a" / "cache"), _inventory(tmp_path / "b" / "cache")
    assert a and a == b


# -- a worker killed mid-build ----------------------------------------------------------------------
def _dies_once_mid_entry(ctx: BuildContext, task: BuildTask) -> dict:
    """Starts writing a cache entry, and on the first attempt kills its own worker process half-way
    (as the OOM killer or a lost node would); the retry builds it whole."""
    root = Path(ctx.settings.cache_dir)
    marker = root.parent / f"attempted-{task.variant}"
    first = not marker.exists()
    if first:
        marker.write_text(str(os.getpid()))

    def build(tmp: Path) -> dict:
        (tmp / "part1.bin").write_bytes(b"a" * 1000)
        if first:
            os.kill(os.getpid(), signal.SIGKILL)
        (tmp / "part2.bin").write_bytes(b"b" * 1000)
        return {"pid": os.getpid()}

    entry = ArtifactCache(root).get_or_build("artifacts/test", {"task": task.id}, build)
    return {"task": task.id, "seconds": 0.0, "node": "n", "entry": str(entry), "first_pid": int(marker.read_text())}


@pytest.mark.e2e
def test_a_killed_worker_is_retried_and_no_partial_entry_is_served(tmp_path):
    ray = pytest.importorskip("ray")
    from ray.cluster_utils import Cluster

    from squeezebench.build import run_on_ray

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    cluster.add_node(num_cpus=1)
    try:
        settings = resolve_settings(data_dir=tmp_path / "data", cache_dir=tmp_path / "cache", threads=1)
        ctx = BuildContext(settings, sys_path=(str(Path(__file__).parent),))
        tasks = [BuildTask("m", "d", "fp32"), BuildTask("m", "d", "v", after=("m/d/fp32",))]
        r = run_on_ray(ctx, tasks, address=cluster.address, say=lambda m: None, task_fn=_dies_once_mid_entry)
    finally:
        ray.shutdown()
        cluster.shutdown()
    assert r.ok, r.failed
    cache = ArtifactCache(tmp_path / "cache")
    for res in r.done:
        entry = Path(res["entry"])
        cache.verify(entry)
        assert (entry / "part2.bin").read_bytes() == b"b" * 1000
        assert ArtifactCache.meta(entry)["pid"] != res["first_pid"]  # built by the retry, not the dead worker
    assert sorted(p.name for p in (tmp_path / "cache" / "artifacts" / "test").iterdir()) == sorted(
        Path(x["entry"]).name for x in r.done)  # no half-written entry, and the dead one's temp dir cleared


def test_scaling_model_is_list_scheduling_bounded_by_the_critical_path():
    from squeezebench.build import critical_path, simulate_wall

    tasks = plan_build(_cases("m", ["a", "b", "c", "a+x"]))
    secs = {"m/d/fp32": 10.0, "m/d/a": 4.0, "m/d/b": 3.0, "m/d/c": 2.0, "m/d/a+x": 5.0}
    assert simulate_wall(tasks, secs, 1) == pytest.approx(24.0)  # the sum
    assert simulate_wall(tasks, secs, 2) == pytest.approx(19.0)  # fp32; a | b; a+x | c
    cp, path = critical_path(tasks, secs)
    assert cp == pytest.approx(19.0) and path == ["m/d/fp32", "m/d/a", "m/d/a+x"]
    assert simulate_wall(tasks, secs, 8) == pytest.approx(cp)  # more workers stop helping
    assert simulate_wall(tasks, secs, 2, overhead_s=1.0) == pytest.approx(22.0)


@pytest.mark.e2e
def test_an_unreachable_shared_cache_stops_the_run_with_one_line(tmp_path):
    """A shared cache nobody answers for: one line naming the URL and the cause, exit 4, for a
    benchmark run and for a build; nothing is written locally."""
    pytest.importorskip("s3fs")
    import socket

    from conftest import run_bench

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "x",
           "AWS_MAX_ATTEMPTS": "1", "AWS_RETRY_MODE": "standard"}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        for extra in (("--benchmark-disable",), ("--sb-build-only",)):
            r, out = run_bench("--sb-models", "lenet300_100", "--sb-datasets", "mnist", "--sb-variants", "fp32",
                               "--sb-backends", "onnxruntime", "--sb-batches", "1", "--sb-shared-cache",
                               "s3://bucket/sqz", *extra, tmp_path=tmp_path, timeout=240)
            assert r.returncode == 4, out[-2000:]
            assert "shared cache s3://bucket/sqz" in out and "Traceback" not in out, out[-2000:]
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    assert not (tmp_path / "cache" / "trained").exists()
