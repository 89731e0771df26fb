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
import statistics
import threading
import time
from pathlib import Path
from typing import Any, Callable

Sync = Callable[[], None]

RAPL_ROOT = Path("/sys/class/powercap")
GPU_MIN_WINDOW_S = 1.0  # NVML's counter / power readings update every few tens of ms to 1 s
CPU_MIN_WINDOW_S = 0.5  # RAPL updates about every ms; 0.5 s keeps the uJ counter far above noise
DEFAULT_IDLE_S = 0.5
# With no energy source (no RAPL access, no GPU), the window only serves the memory tracker: a
# few calls show the peak RSS growth of one call, so a long window would buy nothing (issue 12:
# 1 s per record was most of a warm run's time).
MEMORY_ONLY_CALLS = 3
MEMORY_ONLY_MIN_S = 0.05


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


# GPU energy validity (Zeus, MLPerf power): idle power only once the board's draw has settled;
# the counter's update period measured, and the window's edges aligned to its updates; the power
# samples' coverage checked; an uncertainty for every figure, and none above this share.
SETTLE_MAX_S = 5.0  # give up waiting for clocks to settle after this long: the idle figure is not trusted
SETTLE_TOL = 0.05  # settled: the last SETTLE_SAMPLES power readings within 5 % of their mean
SETTLE_SAMPLES = 5
SETTLE_INTERVAL_S = 0.05
COUNTER_POLL_S = 0.001  # how often the energy counter is read to see it update
MIN_COUNTER_UPDATES = 3  # updates seen while idle before its period counts as known
MIN_PERIODS_PER_WINDOW = 10  # a window shorter than this many counter updates is widened
MAX_REL_UNCERTAINTY = 0.2
MAX_GAP_SAMPLES = 3.0  # power sampling: the largest gap between samples, in sample intervals


def counter_updates(samples: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The (time, value) points where a polled counter changed value (the first reading kept)."""
    out = samples[:1]
    for t, v in samples[1:]:
        if v != out[-1][1]:
            out.append((t, v))
    return out


class GpuEnergy:
    """GPU board energy from NVML, for the device the workload runs on.

    Prefers ``nvmlDeviceGetTotalEnergyConsumption`` (a mJ counter since the driver loaded,
    Volta and newer), which NVML refreshes only every few tens of ms: its update period is measured
    while idle, and the window starts and ends on counter updates, so the energy read covers
    exactly the time between them and only calls run in it. Otherwise integrates
    ``nvmlDeviceGetPowerUsage`` (mW) sampled on a thread, checking that the samples cover the window.
    Power is sampled in both cases for the peak and for settling before the idle measurement."""

    prefix = "energy_gpu"

    def __init__(self, sync: Sync = _no_sync, device_index: int | str | None = 0, *, sample_interval_s: float = 0.02,
                 min_window_s: float = GPU_MIN_WINDOW_S, nvml: Any | None = None,
                 settle_max_s: float = SETTLE_MAX_S):
        self.sync, self.sample_interval_s, self.min_window_s = sync, sample_interval_s, min_window_s
        self.settle_max_s = settle_max_s
        self.reason: str | None = None
        self.invalid: str | None = None  # available, but this measurement cannot be trusted: why
        self.nvml, self.handle, self.mode, self.device = None, None, None, None
        self.idle_w: float | None = None
        self.idle_w_sd: float = 0.0  # standard error of idle_w
        self.idle_s = 0.0
        self.settle_s: float | None = None
        self.period_s: float | None = None
        self.period_jitter_s: float | None = None
        self.idle_updates = 0
        self._e1: float | None = None
        self._end_call_s = 0.0
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

    def _wait_update(self, limit_s: float) -> tuple[float, float] | None:
        """Poll the counter until it changes: (time, new value), or None after ``limit_s``."""
        v0, t_end = self._energy_j(), time.perf_counter() + limit_s
        while time.perf_counter() < t_end:
            time.sleep(COUNTER_POLL_S)
            v = self._energy_j()
            if v != v0:
                return time.perf_counter(), v
        return None

    # idle -----------------------------------------------------------------------------------
    def settle(self) -> None:
        """Wait until the board's power draw is steady (clocks drop after work) before idle is measured."""
        t0, vals = time.perf_counter(), []
        while True:
            try:
                vals.append(self._power_w())
            except Exception:  # no power reading: nothing to settle on, say so in the method
                self.settle_s = None
                return
            last = vals[-SETTLE_SAMPLES:]
            m = sum(last) / len(last)
            if len(last) == SETTLE_SAMPLES and m > 0 and (max(last) - min(last)) <= SETTLE_TOL * m:
                self.settle_s = time.perf_counter() - t0
                return
            if time.perf_counter() - t0 > self.settle_max_s:
                self.settle_s = None
                self.invalid = (f"the board's power did not settle within {self.settle_max_s:g} s before the idle "
                                f"measurement (last readings {', '.join(f'{w:.0f}' for w in last)} W)")
                return
            time.sleep(SETTLE_INTERVAL_S)

    def start_idle(self) -> None:
        self.sync()
        self.settle()
        self._idle_t0 = time.perf_counter()
        if self.mode == "counter":
            self._idle_sampler = _Sampler(self._energy_j, COUNTER_POLL_S).start()
        else:
            self._idle_sampler = _Sampler(self._power_w, self.sample_interval_s).start()

    def stop_idle(self) -> None:
        samples = self._idle_sampler.stop()
        self.idle_s = time.perf_counter() - self._idle_t0
        if self.mode == "counter":
            ups = counter_updates(samples)[1:]  # the first reading is no update
            self.idle_updates = len(ups)
            if len(ups) < MIN_COUNTER_UPDATES:
                self.idle_w = None
                self.invalid = self.invalid or (
                    f"the energy counter updated {len(ups)} times in {self.idle_s:.2f} s of idle; its period, "
                    f"and so the window's edges, cannot be known (needs {MIN_COUNTER_UPDATES})")
                return
            dts = [b[0] - a[0] for a, b in zip(ups, ups[1:])]
            self.period_s = statistics.median(dts)
            self.period_jitter_s = _sd(dts)
            watts = [(b[1] - a[1]) / (b[0] - a[0]) for a, b in zip(ups, ups[1:]) if b[0] > a[0]]
            self.idle_w = (ups[-1][1] - ups[0][1]) / (ups[-1][0] - ups[0][0])
            self.idle_w_sd = _sd(watts) / len(watts) ** 0.5 if len(watts) > 1 else 0.0
            self.min_window_s = max(self.min_window_s, MIN_PERIODS_PER_WINDOW * self.period_s)
        else:
            vals = [w for _, w in samples]
            self.idle_w = sum(vals) / len(vals) if vals else None
            self.idle_w_sd = _sd(vals) / len(vals) ** 0.5 if len(vals) > 1 else 0.0

    # window ---------------------------------------------------------------------------------
    def __enter__(self) -> "GpuEnergy":
        self.sync()
        self._sampler = _Sampler(self._power_w, self.sample_interval_s).start()
        self._e1, self._end_call_s = None, 0.0
        if self.mode == "counter":
            got = self._wait_update(3 * (self.period_s or 1.0))
            if got is None:
                self.invalid = self.invalid or "the energy counter did not update before the window"
                self._t0, self._e0 = time.perf_counter(), self._energy_j()
            else:
                self._t0, self._e0 = got
        else:
            self._t0 = time.perf_counter()
        return self

    def ready_to_stop(self, last_call_s: float) -> bool:
        """Called after each call once the window is long enough: in counter mode, True only
        once the counter has updated since the previous check (the window then ends on an update,
        within the last call), so the energy read covers calls only."""
        if self.mode != "counter" or self.invalid:
            return True
        v = self._energy_j()
        if getattr(self, "_armed", None) is None:
            self._armed = v
            return False
        if v != self._armed:
            self._t1, self._e1, self._end_call_s = time.perf_counter(), v, last_call_s
            self._armed = None
            return True
        return False

    def __exit__(self, *exc) -> None:
        self.sync()
        if self._e1 is None:
            self._t1 = time.perf_counter()
            if self.mode == "counter":
                self._e1 = self._energy_j()
                self.invalid = self.invalid or ("the window ended without a counter update: its end is "
                                                "uncertain by a whole counter period")
        self._armed = None
        self._samples = self._sampler.stop()

    def fields(self, images: int) -> dict:
        p = self.prefix
        if not self.available:
            return {f"{p}_j_per_image": unavailable(self.reason), f"{p}_avg_w": unavailable(self.reason),
                    f"{p}_peak_w": unavailable(self.reason), f"{p}_method": unavailable(self.reason)}
        window = self._t1 - self._t0
        watts = [w for t, w in self._samples]
        peak = max(watts) if watts else None
        settle = ("idle power measured once the draw settled "
                  f"({self.settle_s:.2f} s to within {SETTLE_TOL:.0%})" if self.settle_s is not None
                  else "idle power measured without a settled power reading")
        invalid = self.invalid
        if self.mode == "counter":
            gross = self._e1 - self._e0
            edge = COUNTER_POLL_S + self._end_call_s  # start: poll latency; end: within the last call
            how = (f"NVML total-energy counter (nvmlDeviceGetTotalEnergyConsumption, mJ), updating every "
                   f"{(self.period_s or 0) * 1000:.0f} ms (jitter {(self.period_jitter_s or 0) * 1000:.1f} ms, from "
                   f"{self.idle_updates} idle updates); window from one counter update to another, calls only")
            coverage = None
        else:
            inside = sorted(t for t, _ in self._samples if self._t0 <= t <= self._t1)
            pts = [self._t0, *inside, self._t1]
            gap = max((b - a for a, b in zip(pts, pts[1:])), default=window)
            coverage = min(1.0, len(inside) * self.sample_interval_s / window) if window > 0 else 0.0
            if gap > MAX_GAP_SAMPLES * self.sample_interval_s and not invalid:
                invalid = (f"power samples leave a {gap * 1000:.0f} ms gap in the {window:.2f} s window (sampled "
                           f"every {self.sample_interval_s * 1000:.0f} ms; coverage {coverage:.0%})")
            gross = (sum(watts) / len(watts)) * window if watts else None
            edge = self.sample_interval_s
            how = (f"NVML power usage (nvmlDeviceGetPowerUsage) sampled every "
                   f"{self.sample_interval_s * 1000:.0f} ms on a thread, mean x window")
        out = {
            f"{p}_device": self.device,
            f"{p}_window_s": round(window, 4),
            f"{p}_idle_w": self.idle_w,
            f"{p}_idle_window_s": round(self.idle_s, 4),
            f"{p}_idle_settle_s": self.settle_s,
            f"{p}_counter_period_s": self.period_s,
            f"{p}_sample_coverage": coverage,
            f"{p}_peak_w": peak if peak is not None else unavailable("no power sample succeeded"),
            f"{p}_method": (f"{how}; {settle}, for {self.idle_s:.2f} s before the window, and subtracted; "
                            f"device synchronised on both sides; peak from power samples"),
        }
        if gross is None or self.idle_w is None or invalid:
            why = invalid or ("no power sample succeeded" if gross is None else "idle power unknown")
            return {**out, f"{p}_j_per_image": unavailable(why), f"{p}_avg_w": unavailable(why)}
        net = gross - self.idle_w * window
        avg = gross / window if window > 0 else 0.0
        # Edges: the energy of the time the edges may be off by; idle: its standard error over the window.
        uncertainty = avg * edge + 2 * self.idle_w_sd * window + 0.001
        out[f"{p}_j"] = gross
        out[f"{p}_net_j"] = net
        out[f"{p}_uncertainty_j"] = uncertainty
        out[f"{p}_avg_w"] = avg if window > 0 else unavailable("empty window")
        if not (net > NOISE_FRACTION * gross and images):
            out[f"{p}_j_per_image"] = unavailable(
                f"energy above idle not measurable: {gross:.3f} J in {window:.2f} s vs idle {self.idle_w:.2f} W")
        elif uncertainty > MAX_REL_UNCERTAINTY * net:
            out[f"{p}_j_per_image"] = unavailable(
                f"uncertainty {uncertainty:.3f} J is {uncertainty / net:.0%} of the {net:.3f} J above idle (more than "
                f"{MAX_REL_UNCERTAINTY:.0%}): lengthen --sb-energy-window")
        else:
            out[f"{p}_j_per_image"] = net / images
            out[f"{p}_j_per_image_uncertainty"] = uncertainty / images
        return out


def _sd(xs: list[float]) -> float:
    return statistics.stdev(xs) if len(xs) > 1 else 0.0


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

    def ready_to_stop(self, last_call_s: float) -> bool:
        return True  # RAPL updates about every ms: any end is as good as another

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
    if live:
        idle = DEFAULT_IDLE_S if idle_s is None else idle_s
        for e in live:
            e.start_idle()
        time.sleep(idle)
        for e in live:
            e.stop_idle()
    # Energy needs the full window (a counter's own minimum is known after idle); memory alone
    # needs a few calls (see MEMORY_ONLY_CALLS).
    window = max([window_s] + [e.min_window_s for e in live]) if live else min(window_s, MEMORY_ONLY_MIN_S)
    min_calls = 1 if live else MEMORY_ONLY_CALLS
    # A counter that stops updating must not hold the window open for ever.
    give_up = window + max([3 * (getattr(e, "period_s", None) or 0.0) for e in live] + [1.0])
    mem = MemoryTracker(sync, cuda=device == "cuda")
    calls = 0
    with contextlib.ExitStack() as stack:
        stack.enter_context(mem)
        for e in live:
            stack.enter_context(e)
        t0 = time.perf_counter()
        while True:
            c0 = time.perf_counter()
            fn(arg)
            calls += 1
            now = time.perf_counter()
            if calls >= min_calls and now - t0 >= window and (
                    all([e.ready_to_stop(now - c0) for e in live]) or now - t0 >= give_up):  # noqa: C419 (each tracker checks)
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
            + ("; idle power measured just before" if live else
               f"; no energy source here, so no idle measurement and only the memory tracker's {min_calls} "
               f"calls (--sb-energy-window {window_s:g} s applies when an energy counter is readable)")),
    }
    for t in (*energy, mem):
        out.update(t.fields(images))
    return out
