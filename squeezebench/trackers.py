"""Energy and memory trackers for a window of repeated batch calls.

Every tracker is a context manager that synchronises the device (``sync``) on both sides of
what it measures. :func:`measure_window` runs them around a window of repeated calls *after*
the latency benchmark, so measuring energy never inflates the latency numbers:

1. idle: with nothing running, each energy tracker measures idle power for ``idle_s``;
2. window: the batch call repeats for at least ``window_s`` (longer if a tracker needs a
   longer window for its counter's resolution) while every tracker observes it;
3. fields: joules per image = (energy in the window - idle power x window) / images.

Where a source is absent (no NVML, no GPU, RAPL unreadable) its fields hold
``"unavailable: <reason>"``, never zero. Field names (flat, for ``extra_info``):

``energy_gpu_*`` (NVML, CUDA backends only), ``energy_cpu_*`` (RAPL package zones),
``mem_*`` (psutil RSS; ``mem_cuda_*`` on CUDA), ``energy_window_*`` (the window itself).
"""
from __future__ import annotations

import contextlib
import re
import threading
import time
from pathlib import Path
from typing import Any, Callable

Sync = Callable[[], None]

RAPL_ROOT = Path("/sys/class/powercap")
GPU_MIN_WINDOW_S = 1.0  # NVML's counter / power readings update every few tens of ms to 1 s
CPU_MIN_WINDOW_S = 0.5  # RAPL updates about every ms; 0.5 s keeps the uJ counter far above noise
DEFAULT_IDLE_S = 0.5


# Net energy within this share of the gross reading is indistinguishable from idle (sampling
# and window-edge jitter), so it is reported as unavailable rather than as a tiny number.
NOISE_FRACTION = 0.01


def unavailable(reason: str) -> str:
    return f"unavailable: {reason}"


def _no_sync() -> None:
    return None


def cuda_nvml_id() -> str | None:
    """torch's current CUDA device as NVML must find it: its UUID (``CUDA_VISIBLE_DEVICES`` and MIG
    renumber indices, so an index could name another board), or None when torch exposes none."""
    import torch

    props = torch.cuda.get_device_properties(torch.cuda.current_device())
    uuid = getattr(props, "uuid", None)
    return str(uuid) if uuid else None


def _bare_uuid(uuid: str | bytes) -> str:
    """``GPU-1a2b...`` / ``MIG-1a2b...`` / ``1a2b...`` -> ``1a2b...`` (lower case), to compare
    torch's UUID (no prefix) with NVML's (prefixed by device kind)."""
    u = uuid.decode() if isinstance(uuid, bytes) else str(uuid)
    return re.sub(r"^(GPU|MIG)-", "", u.strip(), flags=re.I).lower()


def nvml_handle_for(nvml: Any, uuid: str | None) -> tuple[Any | None, bool, str | None]:
    """(handle, is_mig, reason) of the NVML device whose UUID is ``uuid``: every board and every
    MIG instance on it is searched. Never a guess: no match gives (None, False, why)."""
    if not uuid:
        return None, False, ("torch exposes no UUID for the CUDA device, so the NVML device it runs on "
                             "cannot be identified (an index may name another board under "
                             "CUDA_VISIBLE_DEVICES or MIG)")
    want = _bare_uuid(uuid)
    try:
        count = nvml.nvmlDeviceGetCount()
    except Exception as e:
        return None, False, f"NVML cannot list devices: {e}"
    seen = []
    for i in range(count):
        try:
            h = nvml.nvmlDeviceGetHandleByIndex(i)
            u = nvml.nvmlDeviceGetUUID(h)
        except Exception:
            continue
        seen.append(_bare_uuid(u))
        if _bare_uuid(u) == want:
            return h, False, None
        try:
            n_mig = nvml.nvmlDeviceGetMaxMigDeviceCount(h)
        except Exception:  # no MIG support on this board or driver
            n_mig = 0
        for j in range(n_mig or 0):
            try:
                m = nvml.nvmlDeviceGetMigDeviceHandleByIndex(h, j)
                mu = nvml.nvmlDeviceGetUUID(m)
            except Exception:  # an empty MIG slot
                continue
            seen.append(_bare_uuid(mu))
            if _bare_uuid(mu) == want:
                return m, True, None
    return None, False, (f"no NVML device or MIG instance has the CUDA device's UUID {want} "
                         f"(NVML lists {len(seen)}: {', '.join(seen) or 'none'})")


def sync_for_backend(backend: str) -> Sync:
    """What makes the device's queued work finish: torch.cuda.synchronize for torch-cuda;
    CPU runtimes return only when their results are ready."""
    if backend == "torch-cuda":
        import torch

        return torch.cuda.synchronize
    return _no_sync


class _Sampler:
    """Calls ``read()`` every ``interval_s`` on a daemon thread; keeps (time, value) pairs."""

    def __init__(self, read: Callable[[], float], interval_s: float):
        self.read, self.interval_s = read, interval_s
        self.samples: list[tuple[float, float]] = []
        self.errors = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True, name="squeezebench-sampler")

    def _loop(self) -> None:
        while True:
            self.sample()
            if self._stop.wait(self.interval_s):
                return

    def sample(self) -> None:
        try:
            self.samples.append((time.perf_counter(), float(self.read())))
        except Exception:  # a failed reading is a missing sample, not a failed benchmark
            self.errors += 1

    def start(self) -> "_Sampler":
        self._thread.start()
        return self

    def stop(self) -> list[tuple[float, float]]:
        self._stop.set()
        self._thread.join()
        self.sample()  # one reading at the very end, after the last call
        return self.samples


# -- GPU energy (NVML) -------------------------------------------------------------------------
def load_nvml() -> tuple[Any | None, str | None]:
    """The initialised ``pynvml`` module, or None and why not. Imported lazily: machines
    without an NVIDIA driver never touch it beyond this check."""
    try:
        import pynvml
    except ImportError as e:
        return None, f"pynvml (nvidia-ml-py) is not installed ({e})"
    try:
        pynvml.nvmlInit()
    except Exception as e:  # NVMLError_LibraryNotFound, _DriverNotLoaded, ...
        return None, f"NVML could not start: {e}"
    return pynvml, None


class GpuEnergy:
    """GPU board energy from NVML, for the device the workload runs on.

    Prefers ``nvmlDeviceGetTotalEnergyConsumption`` (a mJ counter since the driver loaded,
    Volta and newer); otherwise integrates ``nvmlDeviceGetPowerUsage`` (mW) sampled on a thread.
    Power is sampled in both cases for the peak."""

    prefix = "energy_gpu"

    def __init__(self, sync: Sync = _no_sync, device_index: int | str | None = 0, *, sample_interval_s: float = 0.02,
                 min_window_s: float = GPU_MIN_WINDOW_S, nvml: Any | None = None):
        self.sync, self.sample_interval_s, self.min_window_s = sync, sample_interval_s, min_window_s
        self.reason: str | None = None
        self.nvml, self.handle, self.mode, self.device = None, None, None, None
        self.idle_w: float | None = None
        self.idle_s = 0.0
        if nvml is None:
            nvml, self.reason = load_nvml()
        if nvml is None:
            return
        if isinstance(device_index, int):  # an explicit NVML index (tests, single-GPU tools)
            try:
                self.handle, is_mig, why = nvml.nvmlDeviceGetHandleByIndex(device_index), False, None
            except Exception as e:
                self.handle, is_mig, why = None, False, f"NVML has no GPU {device_index}: {e}"
        else:
            self.handle, is_mig, why = nvml_handle_for(nvml, device_index)
        if self.handle is None:
            self.reason = why
            return
        if is_mig:
            # NVML reports power and energy for the whole board only, shared by every MIG
            # instance on it: not this workload's energy.
            self.reason = (f"the CUDA device is MIG instance {device_index}: NVML measures power only for "
                           "the whole board, which other instances share")
            return
        self.nvml = nvml
        try:
            name = nvml.nvmlDeviceGetName(self.handle)
            self.device = name.decode() if isinstance(name, bytes) else str(name)
        except Exception:
            self.device = f"GPU {device_index}"
        try:
            nvml.nvmlDeviceGetTotalEnergyConsumption(self.handle)
            self.mode = "counter"
        except Exception:
            try:
                nvml.nvmlDeviceGetPowerUsage(self.handle)
                self.mode = "power"
            except Exception as e:
                self.reason = f"{self.device}: NVML reports neither total energy nor power usage ({e})"

    @property
    def available(self) -> bool:
        return self.reason is None

    def _energy_j(self) -> float:
        return self.nvml.nvmlDeviceGetTotalEnergyConsumption(self.handle) / 1000.0

    def _power_w(self) -> float:
        return self.nvml.nvmlDeviceGetPowerUsage(self.handle) / 1000.0

    # idle -----------------------------------------------------------------------------------
    def start_idle(self) -> None:
        self.sync()
        self._idle_t0 = time.perf_counter()
        if self.mode == "counter":
            self._idle_e0 = self._energy_j()
        else:
            self._idle_sampler = _Sampler(self._power_w, self.sample_interval_s).start()

    def stop_idle(self) -> None:
        t1 = time.perf_counter()
        self.idle_s = t1 - self._idle_t0
        if self.mode == "counter":
            self.idle_w = (self._energy_j() - self._idle_e0) / self.idle_s if self.idle_s > 0 else None
        else:
            vals = [w for _, w in self._idle_sampler.stop()]
            self.idle_w = sum(vals) / len(vals) if vals else None

    # window ---------------------------------------------------------------------------------
    def __enter__(self) -> "GpuEnergy":
        self.sync()
        self._sampler = _Sampler(self._power_w, self.sample_interval_s).start()
        self._t0 = time.perf_counter()
        self._e0 = self._energy_j() if self.mode == "counter" else None
        return self

    def __exit__(self, *exc) -> None:
        self.sync()
        self._e1 = self._energy_j() if self.mode == "counter" else None
        self._t1 = time.perf_counter()
        self._samples = self._sampler.stop()

    def fields(self, images: int) -> dict:
        p = self.prefix
        if not self.available:
            return {f"{p}_j_per_image": unavailable(self.reason), f"{p}_avg_w": unavailable(self.reason),
                    f"{p}_peak_w": unavailable(self.reason), f"{p}_method": unavailable(self.reason)}
        window = self._t1 - self._t0
        watts = [w for _, w in self._samples]
        peak = max(watts) if watts else None
        if self.mode == "counter":
            gross = self._e1 - self._e0
            how = "NVML total-energy counter (nvmlDeviceGetTotalEnergyConsumption, mJ)"
        else:
            gross = (sum(watts) / len(watts)) * window if watts else None
            how = (f"NVML power usage (nvmlDeviceGetPowerUsage) sampled every "
                   f"{self.sample_interval_s * 1000:.0f} ms on a thread, mean x window")
        out = {
            f"{p}_device": self.device,
            f"{p}_window_s": round(window, 4),
            f"{p}_idle_w": self.idle_w,
            f"{p}_idle_window_s": round(self.idle_s, 4),
            f"{p}_peak_w": peak if peak is not None else unavailable("no power sample succeeded"),
            f"{p}_method": (f"{how}; idle power measured for {self.idle_s:.2f} s before the window and "
                            f"subtracted; device synchronised on both sides; peak from power samples"),
        }
        if gross is None or self.idle_w is None:
            why = "no power sample succeeded" if gross is None else "idle power unknown"
            return {**out, f"{p}_j_per_image": unavailable(why), f"{p}_avg_w": unavailable(why)}
        net = gross - self.idle_w * window
        out[f"{p}_j"] = gross
        out[f"{p}_net_j"] = net
        out[f"{p}_avg_w"] = gross / window if window > 0 else unavailable("empty window")
        out[f"{p}_j_per_image"] = (net / images if net > NOISE_FRACTION * gross and images else unavailable(
            f"energy above idle not measurable: {gross:.3f} J in {window:.2f} s vs idle {self.idle_w:.2f} W"))
        return out


# -- CPU energy (RAPL) -------------------------------------------------------------------------
class RaplEnergy:
    """CPU package energy from Linux powercap RAPL: ``<root>/intel-rapl:N/energy_uj`` summed
    over packages (sub-zones like ``intel-rapl:0:0`` are inside their package and skipped),
    wraparound corrected with ``max_energy_range_uj``. Counts everything on the package,
    not only this process: idle power is subtracted, but a busy neighbour still shows."""

    prefix = "energy_cpu"

    def __init__(self, sync: Sync = _no_sync, root: str | Path = RAPL_ROOT, *,
                 min_window_s: float = CPU_MIN_WINDOW_S):
        self.sync, self.root, self.min_window_s = sync, Path(root), min_window_s
        self.reason: str | None = None
        self.zones: list[Path] = []
        self.max_uj: dict[Path, int | None] = {}
        self.idle_w: float | None = None
        self.idle_s = 0.0
        self.wraps = 0
        if not self.root.is_dir():
            self.reason = f"no powercap interface at {self.root}"
            return
        self.zones = sorted(z for z in self.root.glob("intel-rapl:*") if re.fullmatch(r"intel-rapl:\d+", z.name))
        if not self.zones:
            self.reason = f"no RAPL package zone (intel-rapl:N) under {self.root}"
            return
        try:
            self._read()
        except (OSError, ValueError) as e:
            self.reason = f"RAPL counter not readable ({type(e).__name__}: {e}); reading energy_uj usually needs root"
            return
        for z in self.zones:
            try:
                self.max_uj[z] = int((z / "max_energy_range_uj").read_text().strip())
            except (OSError, ValueError):
                self.max_uj[z] = None

    @property
    def available(self) -> bool:
        return self.reason is None

    def _read(self) -> dict[Path, int]:
        return {z: int((z / "energy_uj").read_text().strip()) for z in self.zones}

    def _delta_j(self, start: dict[Path, int], end: dict[Path, int]) -> float | None:
        total = 0
        for z in self.zones:
            d = end[z] - start[z]
            if d < 0:
                if self.max_uj.get(z) is None:
                    return None
                d += self.max_uj[z]
                self.wraps += 1
            total += d
        return total / 1e6

    def start_idle(self) -> None:
        self.sync()
        self._idle_t0, self._idle_e0 = time.perf_counter(), self._read()

    def stop_idle(self) -> None:
        e1, t1 = self._read(), time.perf_counter()
        self.idle_s = t1 - self._idle_t0
        d = self._delta_j(self._idle_e0, e1)
        self.idle_w = d / self.idle_s if d is not None and self.idle_s > 0 else None

    def __enter__(self) -> "RaplEnergy":
        self.sync()
        self._t0, self._e0 = time.perf_counter(), self._read()
        return self

    def __exit__(self, *exc) -> None:
        self.sync()
        self._e1, self._t1 = self._read(), time.perf_counter()

    def _zone_names(self) -> str:
        names = []
        for z in self.zones:
            try:
                names.append(f"{z.name} ({(z / 'name').read_text().strip()})")
            except OSError:
                names.append(z.name)
        return ", ".join(names)

    def fields(self, images: int) -> dict:
        p = self.prefix
        if not self.available:
            return {f"{p}_j_per_image": unavailable(self.reason), f"{p}_avg_w": unavailable(self.reason),
                    f"{p}_method": unavailable(self.reason)}
        window = self._t1 - self._t0
        gross = self._delta_j(self._e0, self._e1)
        out = {
            f"{p}_window_s": round(window, 4),
            f"{p}_idle_w": self.idle_w,
            f"{p}_idle_window_s": round(self.idle_s, 4),
            f"{p}_method": (f"RAPL energy_uj of {self._zone_names()} summed, wraparound corrected with "
                            f"max_energy_range_uj; idle power measured for {self.idle_s:.2f} s before the "
                            f"window and subtracted; whole package, so other processes count too"),
        }
        if gross is None or self.idle_w is None:
            why = "counter wrapped with no max_energy_range_uj to correct it"
            return {**out, f"{p}_j_per_image": unavailable(why), f"{p}_avg_w": unavailable(why)}
        net = gross - self.idle_w * window
        out.update({
            f"{p}_j": gross, f"{p}_net_j": net,
            f"{p}_avg_w": gross / window if window > 0 else unavailable("empty window"),
            f"{p}_j_per_image": (net / images if net > NOISE_FRACTION * gross and images else unavailable(
                f"energy above idle not measurable: {gross:.3f} J in {window:.2f} s vs idle {self.idle_w:.2f} W")),
        })
        return out


# -- memory ------------------------------------------------------------------------------------
class MemoryTracker:
    """Peak growth of this process's RSS (psutil, sampled on a thread) over the window, and on
    CUDA ``torch.cuda.max_memory_allocated`` (peak statistics reset at the start)."""

    prefix = "mem"

    def __init__(self, sync: Sync = _no_sync, *, cuda: bool = False, interval_s: float = 0.002):
        self.sync, self.interval_s = sync, interval_s
        self.cuda_reason: str | None = None
        if cuda:
            import torch

            if not torch.cuda.is_available():
                self.cuda_reason = "torch sees no CUDA device"
        self.cuda = cuda and self.cuda_reason is None
        import psutil

        self._proc = psutil.Process()

    def __enter__(self) -> "MemoryTracker":
        self.sync()
        if self.cuda:
            import torch

            torch.cuda.reset_peak_memory_stats()
            self._cuda0 = torch.cuda.memory_allocated()
        self._rss0 = self._proc.memory_info().rss
        self._sampler = _Sampler(lambda: self._proc.memory_info().rss, self.interval_s).start()
        return self

    def __exit__(self, *exc) -> None:
        self.sync()
        self._samples = self._sampler.stop()
        if self.cuda:
            import torch

            self._cuda_peak = torch.cuda.max_memory_allocated()

    def fields(self, images: int) -> dict:
        peak = max((v for _, v in self._samples), default=self._rss0)
        out = {
            "mem_rss_start_bytes": int(self._rss0),
            "mem_rss_peak_bytes": int(peak),
            "mem_rss_peak_growth_bytes": int(max(0, peak - self._rss0)),
            "mem_rss_samples": len(self._samples),
            "mem_method": (f"psutil RSS of this process sampled every {self.interval_s * 1000:.0f} ms on a "
                           "thread during the repeated-call window; growth = peak - RSS at the start"),
        }
        if self.cuda_reason:
            out["mem_cuda_method"] = unavailable(self.cuda_reason)
        if self.cuda:
            out.update({
                "mem_cuda_max_allocated_bytes": int(self._cuda_peak),
                "mem_cuda_peak_growth_bytes": int(max(0, self._cuda_peak - self._cuda0)),
                "mem_cuda_method": "torch.cuda.max_memory_allocated after reset_peak_memory_stats at the start",
            })
        return out


# -- the window --------------------------------------------------------------------------------
def disabled_fields(reason: str, device: str = "cpu") -> dict:
    msg = unavailable(reason)
    out = {"energy_window_method": msg, "energy_cpu_j_per_image": msg, "energy_cpu_method": msg,
           "mem_method": msg}
    if device == "cuda":
        out.update({"energy_gpu_j_per_image": msg, "energy_gpu_method": msg})
    return out


def measure_window(
    fn: Callable[[Any], Any], arg: Any, *, batch: int, window_s: float, device: str = "cpu",
    sync: Sync | None = None, idle_s: float | None = None, rapl_root: str | Path = RAPL_ROOT,
    nvml: Any | None = None, gpu_index: int | str | None = 0, gpu_min_window_s: float = GPU_MIN_WINDOW_S,
    cpu_min_window_s: float = CPU_MIN_WINDOW_S, sample_interval_s: float = 0.02,
) -> dict:
    """Idle power, then ``fn(arg)`` repeated for at least ``window_s`` (and each available energy
    tracker's minimum window) under every tracker; returns their fields for ``extra_info``.

    ``device`` is "cuda" for GPU workloads (adds NVML energy and CUDA memory) else "cpu".
    ``window_s <= 0`` disables the window: the fields say so."""
    if window_s <= 0:
        return disabled_fields("disabled (--sb-energy-window 0)", device)
    sync = sync or _no_sync
    energy: list[Any] = [RaplEnergy(sync, rapl_root, min_window_s=cpu_min_window_s)]
    if device == "cuda":
        energy.append(GpuEnergy(sync, gpu_index, nvml=nvml, min_window_s=gpu_min_window_s,
                                sample_interval_s=sample_interval_s))
    live = [e for e in energy if e.available]
    window = max([window_s] + [e.min_window_s for e in live])
    if live:
        idle = DEFAULT_IDLE_S if idle_s is None else idle_s
        for e in live:
            e.start_idle()
        time.sleep(idle)
        for e in live:
            e.stop_idle()
    mem = MemoryTracker(sync, cuda=device == "cuda")
    calls = 0
    with contextlib.ExitStack() as stack:
        stack.enter_context(mem)
        for e in live:
            stack.enter_context(e)
        t0 = time.perf_counter()
        while True:
            fn(arg)
            calls += 1
            if time.perf_counter() - t0 >= window:
                break
        elapsed = time.perf_counter() - t0
    images = calls * batch
    out = {
        "energy_window_s": round(elapsed, 4),
        "energy_window_min_s": window,
        "energy_calls": calls,
        "energy_images": images,
        "energy_window_method": (
            f"after the latency timing, the batch call repeated {calls} times for {elapsed:.2f} s "
            f"(at least {window:g} s) on the same preloaded input"
            + ("; idle power measured just before" if live else "; no energy source here, so no idle measurement")),
    }
    for t in (*energy, mem):
        out.update(t.fields(images))
    return out
