"""The build phase: every variant and artifact a run needs, produced into the cache before any
timing, in this process or as Ray tasks (``pytest bench/ --sb-build-only``, ``squeezebench build``).

Building is the cost (training, fine-tuning, QAT, distillation, quantization, export) and it is
embarrassingly parallel; timing is not. A :class:`BuildTask` is one (model, dataset, variant) with
the backends whose artifacts it writes; :func:`plan_build` orders tasks so a baseline comes before
its variants (a distillation's teacher is the row's baseline) and a chain after the longest
prefix of it that is also a task. Every task goes through the engine's own cached paths, so a
task run twice, or by two workers, builds each entry once (the cache's lock) and a worker killed
mid-entry leaves nothing that is served (the cache's atomic publish).

Ray is the scheduler (tasks with declared CPUs, dependencies as object refs, retries when a worker
dies); nothing here queues or pools by hand. Without ``--sb-workers`` or ``--sb-ray-address`` no
Ray is imported and tasks run in order in this process, exactly as a benchmark run builds them.
"""
from __future__ import annotations

import os
import socket
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence

from squeezebench.profiles import Case

Say = Callable[[str], None]
# A dead worker's task runs again elsewhere (Ray's own retry); a Python exception does not.
MAX_RETRIES = 3


class BuildError(Exception):
    """A build that cannot start (no Ray, unreachable cluster, a task that fits no node);
    the message names the fix."""


@dataclass(frozen=True)
class BuildTask:
    model: str
    dataset: str
    variant: str
    backends: tuple[str, ...] = ()
    after: tuple[str, ...] = ()  # ids of the tasks that must finish first

    @property
    def id(self) -> str:
        return f"{self.model}/{self.dataset}/{self.variant}"


@dataclass
class BuildResult:
    """What a build did: per task its seconds, node and skipped backends, or why it failed."""

    done: list[dict] = field(default_factory=list)
    failed: list[dict] = field(default_factory=list)
    wall_s: float = 0.0
    workers: int = 0  # 0: in this process
    address: str | None = None

    @property
    def ok(self) -> bool:
        return not self.failed

    def summary(self) -> str:
        busy = sum(t["seconds"] for t in self.done)
        where = "in this process" if not self.workers else f"on Ray ({self.workers} slots, {self.address})"
        line = (f"build: {len(self.done)} tasks done, {len(self.failed)} failed in {self.wall_s:.1f}s {where}; "
                f"task seconds {busy:.1f}")
        return "\n".join([line, *(f"  FAILED {f['task']}: {f['error']}" for f in self.failed)])


def _chain_prefixes(variant: str) -> list[str]:
    parts = variant.split("+")
    return ["+".join(parts[:i]) for i in range(len(parts) - 1, 0, -1)]


def plan_build(cases: Iterable[Case]) -> list[BuildTask]:
    """One task per (model, dataset, variant) of ``cases``, with the backends it needs artifacts
    for, in an order where every task comes after the ones it depends on."""
    backends: dict[tuple[str, str, str], list[str]] = {}
    for c in cases:
        bs = backends.setdefault((c.model, c.dataset, c.variant), [])
        if c.backend not in bs:
            bs.append(c.backend)
    for m, d, _ in list(backends):  # every variant starts from its pair's baseline
        backends.setdefault((m, d, "fp32"), [])
    tasks: list[BuildTask] = []
    # Fewer chain steps first: a task's dependencies (baseline, chain prefixes) precede it.
    for (m, d, v), bs in sorted(backends.items(), key=lambda kv: (len(kv[0][2].split("+")) if kv[0][2] != "fp32" else 0)):
        after: list[str] = []
        if v != "fp32":
            after.append(f"{m}/{d}/fp32")
            prefix = next((p for p in _chain_prefixes(v) if (m, d, p) in backends), None)
            if prefix is not None:
                after.append(f"{m}/{d}/{prefix}")
        tasks.append(BuildTask(m, d, v, tuple(bs), tuple(after)))
    return tasks


# -- one task, wherever it runs -----------------------------------------------------------------
@dataclass(frozen=True)
class BuildContext:
    """What a worker needs to build as this process would: the settings (cache, data, threads),
    the user's config, --sb-checkpoint files, --sb-shared-cache, and the import path (a user's
    models package must import in the worker)."""

    settings: Any  # squeezebench.settings.Settings
    config: Any = None  # squeezebench.config.Config
    checkpoints: tuple[tuple[str, str], ...] = ()
    sys_path: tuple[str, ...] = ()


_BENCHES: dict[int, Any] = {}


def _workbench(ctx: BuildContext, say: Say | None = None):
    """One engine per context per process: a Ray worker process runs many tasks and keeps its
    datasets loaded between them."""
    from pathlib import Path

    from squeezebench.workbench import Workbench

    k = hash((ctx.settings, ctx.checkpoints, ctx.sys_path, repr(ctx.config)))
    if k not in _BENCHES:
        for p in reversed(ctx.sys_path):
            if p not in sys.path:
                sys.path.insert(0, p)
        wb = Workbench(ctx.settings, progress=say, config=ctx.config)
        wb.checkpoints.update({m: Path(p) for m, p in ctx.checkpoints})
        _BENCHES[k] = wb
    return _BENCHES[k]


def build_task(ctx: BuildContext, task: BuildTask, say: Say | None = None) -> dict:
    """Build ``task``'s variant and its artifacts (the compact one and each backend's) into the
    cache; returns what ran. A backend that cannot run the variant here is skipped with its reason
    (as its benchmark would skip), not failed."""
    from squeezebench.backends import get_backend
    from squeezebench.domain import VariantUnavailable
    from squeezebench.models import ModelUnavailable

    t0 = time.perf_counter()
    wb = _workbench(ctx, say)
    skipped: dict[str, str] = {}
    formats: list[str] = []
    try:
        v = wb.variant(task.model, task.dataset, task.variant)
    except (ModelUnavailable, VariantUnavailable) as e:
        return {"task": task.id, "seconds": time.perf_counter() - t0, "skipped": {"*": str(e)}, "formats": [],
                "node": socket.gethostname(), "pid": os.getpid()}
    with wb.pinned_threads():
        wb.artifact(v, "compressed")
        formats.append("compressed")
        for name in task.backends:
            backend = get_backend(name)
            reason = v.unsupported_reason(name, backend.artifact_format)
            if reason:
                skipped[name] = reason
                continue
            if backend.artifact_format not in formats:
                wb.artifact(v, backend.artifact_format)
                formats.append(backend.artifact_format)
    return {"task": task.id, "seconds": time.perf_counter() - t0, "skipped": skipped, "formats": formats,
            "node": socket.gethostname(), "pid": os.getpid()}


# -- progress ------------------------------------------------------------------------------------
class _Progress:
    """Tasks done, running and failed, with an ETA from the mean task time over the slots."""

    def __init__(self, tasks: Sequence[BuildTask], slots: int, say: Say):
        self.tasks, self.slots, self.say = list(tasks), max(1, slots), say
        self.finished: set[str] = set()
        self.failed: set[str] = set()
        self.seconds: list[float] = []
        self.t0 = time.perf_counter()

    def running(self) -> int:
        """Tasks whose dependencies are done and that are not: at most one per slot runs."""
        ready = [t for t in self.tasks if t.id not in self.finished | self.failed
                 and all(d in self.finished for d in t.after)]
        return min(len(ready), self.slots)

    def eta(self) -> str:
        left = len(self.tasks) - len(self.finished) - len(self.failed)
        if not self.seconds or not left:
            return "?" if left else "0s"
        s = sum(self.seconds) / len(self.seconds) * left / self.slots
        return f"{s / 60:.1f} min" if s >= 90 else f"{s:.0f}s"

    def report(self, result: dict | None = None, task_id: str | None = None, error: str | None = None) -> None:
        if error is not None:
            self.failed.add(task_id or "?")
        elif result is not None:
            self.finished.add(result["task"])
            self.seconds.append(result["seconds"])
        n = len(self.tasks)
        what = (f"FAILED {task_id}: {error}" if error is not None
                else f"{result['task']} {result['seconds']:.1f}s" + (f" on {result['node']}" if result else ""))
        self.say(f"build {len(self.finished)}/{n} done, {self.running()} running, {len(self.failed)} failed, "
                 f"ETA {self.eta()} | {what}")


def _error_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return (text[-1] if text else type(e).__name__)[:300]


# -- in this process -----------------------------------------------------------------------------
def run_in_process(ctx: BuildContext, tasks: Sequence[BuildTask], say: Say = print,
                   progress: Say | None = None) -> BuildResult:
    """Every task in order in this process (the default: no Ray, the same result as a benchmark
    run's own building). A failed task fails the tasks after it that depend on it."""
    out, prog, t0 = BuildResult(), _Progress(tasks, 1, say), time.perf_counter()
    for t in tasks:
        bad = [d for d in t.after if d in prog.failed]
        if bad:
            err = f"not built: it depends on {bad[0]}, which failed"
            out.failed.append({"task": t.id, "error": err})
            prog.report(task_id=t.id, error=err)
            continue
        try:
            r = build_task(ctx, t, progress)
        except Exception as e:  # noqa: BLE001 - one task's failure is reported, the others go on
            out.failed.append({"task": t.id, "error": _error_line(e)})
            prog.report(task_id=t.id, error=_error_line(e))
            continue
        out.done.append(r)
        prog.report(r)
    out.wall_s = time.perf_counter() - t0
    return out


# -- on Ray ----------------------------------------------------------------------------------------
def _import_ray():
    try:
        import ray
    except ImportError:
        raise BuildError("--sb-workers / --sb-ray-address need Ray: pip install 'squeezebench[cluster]' "
                         "(or pip install 'ray[default]'); without them the build runs in this process") from None
    return ray


def start_ray(workers: int, address: str | None, cpus_per_task: int, sys_path: Sequence[str] = ()) -> tuple[Any, int, str]:
    """Join the cluster at ``address``, or start a local Ray with ``workers`` x ``cpus_per_task``
    CPUs. Returns (ray, task slots, address). A cluster that cannot be reached, or whose nodes are
    all smaller than one task, is a :class:`BuildError` naming the fix."""
    ray = _import_ray()
    # The user's modules (their models package) must import in every worker, as here.
    env = {"PYTHONPATH": os.pathsep.join(dict.fromkeys([*sys_path, *os.environ.get("PYTHONPATH", "").split(os.pathsep)]))
           .strip(os.pathsep)}
    runtime_env = {"env_vars": env}
    if address and address != "auto":
        _probe(address)
    try:
        if address:
            ray.init(address=address, runtime_env=runtime_env, logging_level="ERROR", log_to_driver=False)
        else:
            ray.init(num_cpus=workers * cpus_per_task, num_gpus=0, runtime_env=runtime_env,
                     include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    except (ConnectionError, RuntimeError, ValueError, TimeoutError) as e:
        where = f"the Ray cluster at {address}" if address else "a local Ray"
        raise BuildError(f"could not start or join {where}: {_error_line(e)}; check the address "
                         "(`ray status --address ADDR` on the head node) or drop --sb-ray-address") from None
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    sizes = [int(n.get("Resources", {}).get("CPU", 0)) for n in nodes]
    if not sizes or max(sizes) < cpus_per_task:
        ray.shutdown()
        raise BuildError(f"each build task pins {cpus_per_task} threads (--sb-threads, part of every trained "
                         f"cache key) but the largest Ray node has {max(sizes, default=0)} CPUs; give "
                         f"--sb-threads {max(1, max(sizes, default=1))} or add bigger nodes")
    slots = sum(s // cpus_per_task for s in sizes)
    return ray, slots, str(ray.get_runtime_context().gcs_address)


def _probe(address: str) -> None:
    """ray.init waits minutes for a head that never answers: a TCP connect first, 5 s."""
    hostport = address.split("://", 1)[-1].rsplit("/", 1)[0]
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise BuildError(f"--sb-ray-address {address!r} is not host:port (ray start --head prints the address, "
                         "e.g. 10.0.0.5:6379)")
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
    except OSError as e:
        raise BuildError(f"the Ray cluster at {address} is unreachable ({e.strerror or e}); start it with "
                         f"`ray start --head --port {port}` on {host}, check the address and firewall, or drop "
                         "--sb-ray-address to build in this process") from None


def run_on_ray(ctx: BuildContext, tasks: Sequence[BuildTask], *, workers: int = 0, address: str | None = None,
               say: Say = print, task_fn: Callable[..., dict] | None = None, shutdown: bool = True) -> BuildResult:
    """Every task as a Ray task declaring ``settings.threads`` CPUs and no GPU (building trains on
    the CPU), each after the tasks it depends on (their object refs are its arguments), retried
    up to MAX_RETRIES times on another worker when its worker dies. ``task_fn(ctx, task)`` replaces
    :func:`build_task` (tests)."""
    threads = int(ctx.settings.threads)
    ray, slots, used = start_ray(workers, address, threads, ctx.sys_path)
    fn = task_fn or build_task
    remote = ray.remote(num_cpus=threads, num_gpus=0, max_retries=MAX_RETRIES, retry_exceptions=False)(_remote_entry)
    out = BuildResult(workers=slots, address=used)
    prog, t0 = _Progress(tasks, slots, say), time.perf_counter()
    refs: dict[str, Any] = {}
    try:
        for t in tasks:
            deps = [refs[d] for d in t.after if d in refs]
            refs[t.id] = remote.options(name=t.id).remote(fn, ctx, t, *deps)
        by_ref = {r: tid for tid, r in refs.items()}
        pending = list(refs.values())
        while pending:
            ready, pending = ray.wait(pending, num_returns=1, timeout=30.0)
            for r in ready:
                tid = by_ref[r]
                try:
                    res = ray.get(r)
                except Exception as e:  # noqa: BLE001 - reported per task; the others go on
                    err = _dependency_error(e, tid, tasks, prog.failed)
                    out.failed.append({"task": tid, "error": err})
                    prog.report(task_id=tid, error=err)
                    continue
                out.done.append(res)
                prog.report(res)
    finally:
        out.wall_s = time.perf_counter() - t0
        if shutdown:
            ray.shutdown()
    return out


def _remote_entry(fn: Callable[..., dict], ctx: BuildContext, task: BuildTask, *deps: Any) -> dict:
    # `deps` are the finished dependencies' results: Ray starts this task only after them.
    return fn(ctx, task)


def _dependency_error(e: BaseException, tid: str, tasks: Sequence[BuildTask], failed: set[str]) -> str:
    task = next((t for t in tasks if t.id == tid), None)
    bad = [d for d in (task.after if task else ()) if d in failed]
    if bad:
        return f"not built: it depends on {bad[0]}, which failed"
    return _error_line(e)


def importable_paths() -> tuple[str, ...]:
    """This process's own import directories (a user's project, PYTHONPATH), not the installed
    packages', which every worker of the same environment has."""
    skip = {os.path.realpath(p) for p in {sys.prefix, sys.base_prefix, sys.exec_prefix}}
    out = []
    for p in sys.path:
        rp = os.path.realpath(p or os.getcwd())
        if os.path.isdir(rp) and not any(rp == s or rp.startswith(s + os.sep) for s in skip):
            out.append(rp)
    return tuple(dict.fromkeys(out))


# Namespaces a measuring machine may fill itself: evaluations are measurements of the target's
# runtime (keyed on its CPU), an image folder's decoded tensors are data, not a build.
MEASURE_ONLY_ALLOWED = ("evaluations", "datasets")


_WHAT = {"trained": "trained model", "variants": "compressed variant (a chain step's weights)",
         "teacher_logits": "teacher's logits"}


def measure_only_guard(build_command: str) -> Callable[[str, Any], str | None]:
    """For ``ArtifactCache.forbid_build`` under --sb-measure-only: a missing trained model, variant
    step, teacher's logits or artifact is an error naming the command that builds it."""

    def guard(namespace: str, key_parts: Any) -> str | None:
        if namespace in MEASURE_ONLY_ALLOWED:
            return None
        what = _WHAT.get(namespace) or (f"{namespace.split('/', 1)[1]} artifact" if namespace.startswith("artifacts/")
                                        else f"{namespace} entry")
        return (f"--sb-measure-only: no {what} in the cache for this record, and nothing is trained, quantized "
                f"or exported on a measuring machine; build it first: {build_command}")

    return guard


def simulate_wall(tasks: Sequence[BuildTask], seconds: dict[str, float], workers: int,
                  overhead_s: float = 0.0) -> float:
    """Wall time of ``tasks`` on ``workers`` slots when each takes ``seconds[id]`` (+ ``overhead_s``)
    and starts as soon as its dependencies are done and a slot is free, in plan order (Ray's
    FIFO): the scaling model. With enough workers it is the critical path."""
    free = [0.0] * max(1, workers)
    end: dict[str, float] = {}
    pending = list(tasks)
    while pending:
        # the first task in plan order whose dependencies are done soonest
        t = min(pending, key=lambda t: max((end[d] for d in t.after if d in end), default=0.0))
        pending.remove(t)
        ready = max((end[d] for d in t.after if d in end), default=0.0)
        i = min(range(len(free)), key=free.__getitem__)
        start = max(ready, free[i])
        end[t.id] = free[i] = start + seconds.get(t.id, 0.0) + overhead_s
    return max(end.values(), default=0.0)


def critical_path(tasks: Sequence[BuildTask], seconds: dict[str, float]) -> tuple[float, list[str]]:
    """The longest dependency chain (seconds and task ids): no worker count builds faster."""
    best: dict[str, tuple[float, list[str]]] = {}
    for t in tasks:  # plan order is topological
        prev = max((best[d] for d in t.after if d in best), default=(0.0, []), key=lambda x: x[0])
        best[t.id] = (prev[0] + seconds.get(t.id, 0.0), [*prev[1], t.id])
    return max(best.values(), default=(0.0, []), key=lambda x: x[0])


def run_build(ctx: BuildContext, tasks: Sequence[BuildTask], *, workers: int = 0, address: str | None = None,
              say: Say = print, progress: Say | None = None) -> BuildResult:
    """In this process unless ``workers`` or ``address`` asks for Ray."""
    if workers or address:
        return run_on_ray(ctx, tasks, workers=workers, address=address, say=say)
    return run_in_process(ctx, tasks, say=say, progress=progress)
