"""Energy and memory trackers against a fake NVML, fake RAPL files, and their absence."""
from __future__ import annotations

import re
import sys
import time
from pathlib import Path

import pytest

from squeezebench import trackers
from squeezebench.trackers import GpuEnergy, MemoryTracker, RaplEnergy, measure_window


class FakeNvml:
    """pynvml's surface that the tracker uses. The board draws ``idle_w`` until ``busy`` is set,
    then ``busy_w``; the energy counter integrates that over real time (mJ, like NVML)."""

    class NVMLError(Exception):
        pass

    def __init__(self, idle_w: float = 50.0, busy_w: float = 150.0, counter: bool = True):
        self.idle_w, self.busy_w, self.counter = idle_w, busy_w, counter
        self.busy = False
        self._j = 123456.0  # the counter runs since driver load: never starts at zero
        self._t = time.perf_counter()
        self.calls: list[str] = []

    def _advance(self) -> None:
        now = time.perf_counter()
        self._j += (self.busy_w if self.busy else self.idle_w) * (now - self._t)
        self._t = now

    def set_busy(self, busy: bool) -> None:
        self._advance()
        self.busy = busy

    def nvmlDeviceGetHandleByIndex(self, i):
        return f"handle{i}"

    def nvmlDeviceGetHandleByUUID(self, uuid):
        return uuid

    def nvmlDeviceGetName(self, h):
        return b"Fake GPU"

    def nvmlDeviceGetTotalEnergyConsumption(self, h):
        self.calls.append("energy")
        if not self.counter:
            raise self.NVMLError("Not Supported")
        self._advance()
        return int(self._j * 1000)

    def nvmlDeviceGetPowerUsage(self, h):
        self.calls.append("power")
        return int((self.busy_w if self.busy else self.idle_w) * 1000)


def _window(fake: FakeNvml, **kw) -> dict:
    def work(_):
        fake.set_busy(True)
        time.sleep(0.002)

    try:
        return measure_window(work, None, batch=8, window_s=0.3, device="cuda", idle_s=0.15,
                              gpu_min_window_s=0.3, sample_interval_s=0.005, rapl_root="/nonexistent", **kw)
    finally:
        fake.set_busy(False)


@pytest.fixture
def fake_nvml(monkeypatch):
    fake = FakeNvml()
    monkeypatch.setattr(trackers, "load_nvml", lambda: (fake, None))
    return fake


def test_gpu_energy_counter_path_subtracts_idle(fake_nvml):
    f = _window(fake_nvml)
    assert "counter" in f["energy_gpu_method"] and "idle" in f["energy_gpu_method"]
    assert f["energy_gpu_device"] == "Fake GPU"
    assert f["energy_gpu_idle_w"] == pytest.approx(50.0, rel=0.02)
    assert f["energy_gpu_avg_w"] == pytest.approx(150.0, rel=0.05)
    assert f["energy_gpu_peak_w"] == pytest.approx(150.0)
    window = f["energy_gpu_window_s"]
    assert window >= 0.3
    # net = gross - idle x window: only the 100 W the workload added counts
    assert f["energy_gpu_net_j"] == pytest.approx(f["energy_gpu_j"] - f["energy_gpu_idle_w"] * window, rel=1e-3)
    assert f["energy_gpu_j_per_image"] == pytest.approx(100.0 * window / f["energy_images"], rel=0.05)
    assert f["energy_images"] == 8 * f["energy_calls"]


def test_gpu_energy_power_sampling_path(monkeypatch):
    fake = FakeNvml(counter=False)
    monkeypatch.setattr(trackers, "load_nvml", lambda: (fake, None))
    f = _window(fake)
    assert "power usage" in f["energy_gpu_method"] and "sampled" in f["energy_gpu_method"]
    assert "energy" not in fake.calls[1:]  # probed once, then never used
    assert f["energy_gpu_idle_w"] == pytest.approx(50.0)
    # the first sample may still see the idle board: sampled means are a little loose
    assert f["energy_gpu_avg_w"] == pytest.approx(150.0, rel=0.1)
    assert f["energy_gpu_peak_w"] == pytest.approx(150.0)
    window = f["energy_gpu_window_s"]
    assert f["energy_gpu_j_per_image"] == pytest.approx(100.0 * window / f["energy_images"], rel=0.2)
    # without subtracting idle it would be 150 W, 50 % off
    assert f["energy_gpu_j_per_image"] < 130.0 * window / f["energy_images"]


def test_gpu_energy_below_idle_is_not_reported_as_a_number(monkeypatch):
    fake = FakeNvml(idle_w=80.0, busy_w=80.0)  # the workload adds nothing measurable
    monkeypatch.setattr(trackers, "load_nvml", lambda: (fake, None))
    f = _window(fake)
    v = f["energy_gpu_j_per_image"]
    assert isinstance(v, str) and v.startswith("unavailable")


def test_gpu_energy_without_nvml_says_why(monkeypatch):
    monkeypatch.setattr(trackers, "load_nvml", lambda: (None, "pynvml (nvidia-ml-py) is not installed (test)"))
    f = _window(FakeNvml())
    for k in ("energy_gpu_j_per_image", "energy_gpu_avg_w", "energy_gpu_peak_w", "energy_gpu_method"):
        assert f[k] == "unavailable: pynvml (nvidia-ml-py) is not installed (test)"
    assert f["energy_calls"] > 0  # the window still ran (memory is measured)


def test_load_nvml_when_the_module_is_missing(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import pynvml -> ImportError
    nvml, reason = trackers.load_nvml()
    assert nvml is None and "not installed" in reason
    g = GpuEnergy()
    assert not g.available
    assert g.fields(10)["energy_gpu_j_per_image"].startswith("unavailable: pynvml")


def test_load_nvml_when_the_driver_is_missing(monkeypatch):
    class NoDriver:
        @staticmethod
        def nvmlInit():
            raise RuntimeError("NVML Shared Library Not Found")

    monkeypatch.setitem(sys.modules, "pynvml", NoDriver)
    nvml, reason = trackers.load_nvml()
    assert nvml is None and "NVML Shared Library Not Found" in reason


def test_gpu_without_energy_or_power_support(monkeypatch):
    class Neither(FakeNvml):
        def nvmlDeviceGetPowerUsage(self, h):
            raise self.NVMLError("Not Supported")

    g = GpuEnergy(nvml=Neither(counter=False))
    assert not g.available and "neither total energy nor power" in g.reason


def test_trackers_synchronise_on_both_sides(fake_nvml):
    log: list[str] = []

    def work(_):
        fake_nvml.set_busy(True)
        log.append("call")

    measure_window(work, None, batch=1, window_s=0.05, device="cuda", sync=lambda: log.append("sync"),
                   idle_s=0.01, gpu_min_window_s=0.05, sample_interval_s=0.005, rapl_root="/nonexistent")
    first, last = log.index("call"), len(log) - 1 - log[::-1].index("call")
    assert "sync" in log[:first]  # before the window starts
    assert log[last + 1:].count("sync") >= 2  # memory and energy trackers both sync after it


# -- RAPL ----------------------------------------------------------------------------------
def _zone(root: Path, name: str, uj: int, max_uj: int | None = 1_000_000, label: str = "package-0") -> Path:
    z = root / name
    z.mkdir(parents=True)
    (z / "energy_uj").write_text(f"{uj}\n")
    if max_uj is not None:
        (z / "max_energy_range_uj").write_text(f"{max_uj}\n")
    (z / "name").write_text(label + "\n")
    return z


def test_rapl_absent_or_empty(tmp_path):
    assert RaplEnergy(root=tmp_path / "missing").reason.startswith("no powercap interface")
    r = RaplEnergy(root=tmp_path)
    assert not r.available and "no RAPL package zone" in r.reason
    f = r.fields(10)
    assert f["energy_cpu_j_per_image"].startswith("unavailable: ") and f["energy_cpu_method"] == f["energy_cpu_j_per_image"]


def test_rapl_unreadable(tmp_path, monkeypatch):
    z = _zone(tmp_path, "intel-rapl:0", 5)
    real_read = Path.read_text

    def deny(self, *a, **kw):
        if self.name == "energy_uj":
            raise PermissionError(13, "Permission denied", str(self))
        return real_read(self, *a, **kw)

    monkeypatch.setattr(Path, "read_text", deny)
    r = RaplEnergy(root=tmp_path)
    assert not r.available
    assert "PermissionError" in r.reason and "root" in r.reason
    f = measure_window(lambda _: None, None, batch=1, window_s=0.02, rapl_root=tmp_path)
    assert f["energy_cpu_j_per_image"].startswith("unavailable: RAPL counter not readable")
    assert "energy_gpu_method" not in f  # CPU backend: no GPU fields at all
    assert z.exists()


def test_rapl_missing_counter_file(tmp_path):
    (tmp_path / "intel-rapl:0").mkdir()
    r = RaplEnergy(root=tmp_path)
    assert not r.available and "not readable" in r.reason


def test_rapl_readable_with_wraparound_and_idle(tmp_path):
    pkg = _zone(tmp_path, "intel-rapl:0", 100_000)
    sub = _zone(tmp_path, "intel-rapl:0:0", 0, label="core")  # inside the package: must not count twice
    pkg1 = _zone(tmp_path, "intel-rapl:1", 10_000, label="package-1")
    r = RaplEnergy(root=tmp_path)
    assert r.available and r.zones == [pkg, pkg1]

    r.start_idle()
    (pkg / "energy_uj").write_text("150000\n")  # +0.05 J
    (pkg1 / "energy_uj").write_text("20000\n")  # +0.01 J
    time.sleep(0.1)
    r.stop_idle()
    assert r.idle_w == pytest.approx(0.06 / r.idle_s)

    (pkg / "energy_uj").write_text("950000\n")
    with r:
        (pkg / "energy_uj").write_text("250000\n")  # wrapped: 950000 -> 1000000 -> 250000 = 0.3 J
        (pkg1 / "energy_uj").write_text("520000\n")  # +0.5 J
        (sub / "energy_uj").write_text("999999\n")
        time.sleep(0.05)
    f = r.fields(images=100)
    assert f["energy_cpu_j"] == pytest.approx(0.8)
    assert r.wraps == 1
    window = r._t1 - r._t0
    assert f["energy_cpu_net_j"] == pytest.approx(0.8 - r.idle_w * window)
    assert f["energy_cpu_j_per_image"] == pytest.approx((0.8 - r.idle_w * window) / 100)
    assert f["energy_cpu_avg_w"] == pytest.approx(0.8 / window)
    assert "package-0" in f["energy_cpu_method"] and "wraparound" in f["energy_cpu_method"]


def test_rapl_wrap_without_range_is_unavailable(tmp_path):
    z = _zone(tmp_path, "intel-rapl:0", 900, max_uj=None)
    r = RaplEnergy(root=tmp_path)
    r.start_idle()
    r.stop_idle()
    with r:
        (z / "energy_uj").write_text("100\n")
    assert r.fields(1)["energy_cpu_j_per_image"].startswith("unavailable: counter wrapped")


# -- memory and the window -------------------------------------------------------------------
def test_memory_tracker_sees_peak_rss_growth():
    def work(_):
        # 64 MiB of fresh pages, written, held while the sampler looks. An anonymous mmap, not a
        # numpy array: after a long test session malloc may hand back pages still resident.
        import mmap

        block = mmap.mmap(-1, 64 * 2**20)
        for off in range(0, len(block), 4096):
            block[off] = 1
        time.sleep(0.03)
        block.close()

    with MemoryTracker(interval_s=0.002) as m:
        work(None)
    f = m.fields(1)
    assert f["mem_rss_peak_growth_bytes"] >= 32 * 2**20
    assert f["mem_rss_samples"] >= 2 and "psutil" in f["mem_method"]
    assert "mem_cuda_max_allocated_bytes" not in f


def test_window_without_an_energy_source_runs_only_the_memory_calls(tmp_path):
    calls = []
    t0 = time.perf_counter()
    f = measure_window(lambda x: calls.append(x), 7, batch=4, window_s=5.0, rapl_root=tmp_path)  # no RAPL zones
    assert time.perf_counter() - t0 < 2.0  # not the 5 s window: nothing would measure energy in it
    assert f["energy_calls"] == len(calls) >= trackers.MEMORY_ONLY_CALLS and set(calls) == {7}
    assert f["energy_images"] == 4 * len(calls)
    assert "no energy source here" in f["energy_window_method"] and "5 s applies" in f["energy_window_method"]
    assert f["energy_cpu_j_per_image"].startswith("unavailable")
    assert isinstance(f["mem_rss_peak_growth_bytes"], int)


def test_window_with_an_energy_source_runs_its_full_length(tmp_path):
    _zone(tmp_path, "intel-rapl:0", 1000)
    calls = []
    f = measure_window(lambda x: calls.append(x), 7, batch=4, window_s=0.3, rapl_root=tmp_path, idle_s=0.05,
                       cpu_min_window_s=0.1)
    assert f["energy_window_s"] >= 0.3 and f["energy_calls"] == len(calls) > 0
    assert "idle power measured just before" in f["energy_window_method"]


def test_window_zero_disables():
    f = measure_window(lambda _: pytest.fail("must not run"), None, batch=1, window_s=0, device="cuda")
    assert f["energy_window_method"] == "unavailable: disabled (--sb-energy-window 0)"
    assert f["energy_gpu_j_per_image"].startswith("unavailable") and f["energy_cpu_j_per_image"].startswith("unavailable")
    assert all(v != 0 for v in f.values())


class MultiGpuNvml(FakeNvml):
    """NVML as on a two-board machine: board 0 is not partitioned, board 1 is split into two MIG
    instances (slot 1 empty). UUIDs as NVML prints them: GPU-... for boards, MIG-... for instances."""

    boards = {0: "GPU-0000aaaa-1111-2222-3333-444455556666", 1: "GPU-1111bbbb-1111-2222-3333-444455556666"}
    migs = {1: {0: "MIG-2222cccc-1111-2222-3333-444455556666", 2: "MIG-3333dddd-1111-2222-3333-444455556666"}}

    def nvmlDeviceGetCount(self):
        return len(self.boards)

    def nvmlDeviceGetHandleByIndex(self, i):
        if i not in self.boards:
            raise self.NVMLError("Invalid Argument")
        return ("board", i)

    def nvmlDeviceGetHandleByUUID(self, uuid):  # must not be needed: the search covers MIG too
        raise AssertionError("the tracker must match UUIDs itself, boards and MIG instances alike")

    def nvmlDeviceGetUUID(self, h):
        return self.boards[h[1]] if h[0] == "board" else self.migs[h[1]][h[2]]

    def nvmlDeviceGetMaxMigDeviceCount(self, h):
        if h[1] not in self.migs:
            raise self.NVMLError("Not Supported")
        return 3

    def nvmlDeviceGetMigDeviceHandleByIndex(self, h, j):
        if j not in self.migs.get(h[1], {}):
            raise self.NVMLError("Not Found")
        return ("mig", h[1], j)

    def nvmlDeviceGetTotalEnergyConsumption(self, h):
        if h[0] == "mig":
            raise self.NVMLError("Not Supported")
        return super().nvmlDeviceGetTotalEnergyConsumption(h)


def test_gpu_is_found_by_uuid_on_any_board_never_guessed():
    nvml = MultiGpuNvml()
    # torch's UUID has no prefix; with CUDA_VISIBLE_DEVICES=1 its index would be 0: the wrong board.
    g = GpuEnergy(device_index="1111bbbb-1111-2222-3333-444455556666", nvml=nvml)
    assert g.handle == ("board", 1) and g.available and g.mode == "counter"
    assert GpuEnergy(device_index="GPU-0000AAAA-1111-2222-3333-444455556666", nvml=nvml).handle == ("board", 0)


def test_unknown_uuid_is_unavailable_not_gpu0():
    g = GpuEnergy(device_index="9999ffff-1111-2222-3333-444455556666", nvml=MultiGpuNvml())
    assert not g.available and g.handle is None
    assert "no NVML device or MIG instance has the CUDA device's UUID 9999ffff" in g.reason
    f = g.fields(8)
    assert f["energy_gpu_j_per_image"].startswith("unavailable: no NVML device")


def test_mig_instance_is_matched_and_reported_unavailable():
    g = GpuEnergy(device_index="2222cccc-1111-2222-3333-444455556666", nvml=MultiGpuNvml())
    assert g.handle == ("mig", 1, 0) and not g.available
    assert "MIG instance" in g.reason and "whole board" in g.reason


def test_no_uuid_from_torch_is_unavailable():
    g = GpuEnergy(device_index=None, nvml=MultiGpuNvml())
    assert not g.available and "exposes no UUID" in g.reason


# -- GPU energy validity against a realistic counter -----------------------------------------------
class CoarseNvml(FakeNvml):
    """NVML as real boards behave: the energy counter (and the power reading) refresh only every
    ``period`` s, with uniform ``jitter``, publishing the energy integrated up to the refresh; after
    work stops the draw decays to idle with time constant ``tau`` (clocks winding down); with
    ``stall_after`` the counter stops refreshing that many seconds after creation."""

    def __init__(self, period: float = 0.1, jitter: float = 0.015, tau: float = 0.0,
                 stall_after: float | None = None, **kw):
        super().__init__(**kw)
        import random

        self.period, self.jitter, self.tau, self.rng = period, jitter, tau, random.Random(0)
        self._busy_end: float | None = None
        self._born = self._t
        self.stall_at = None if stall_after is None else self._t + stall_after
        self._shown_mj = int(self._j * 1000)
        self._shown_w = self.idle_w
        self._next = self._t + self._gap()
        self.updates: list[float] = []

    def _gap(self) -> float:
        return self.period + self.rng.uniform(-self.jitter, self.jitter)

    def _power(self, t: float) -> float:
        if self.busy:
            return self.busy_w
        if self.tau and self._busy_end is not None:
            import math

            return self.idle_w + (self.busy_w - self.idle_w) * math.exp(-(t - self._busy_end) / self.tau)
        return self.idle_w

    def _advance(self) -> None:
        now = time.perf_counter()
        while self._next <= now and (self.stall_at is None or self._next < self.stall_at):
            self._j += self._power(self._t) * (self._next - self._t)
            self._t = self._next
            self._shown_mj, self._shown_w = int(self._j * 1000), self._power(self._t)
            self.updates.append(self._t)
            self._next += self._gap()
        if self.stall_at is not None and self._next >= self.stall_at:
            self._next = float("inf")
        self._j += self._power(self._t) * (now - self._t)
        self._t = now

    def set_busy(self, busy: bool) -> None:
        self._advance()
        if self.busy and not busy:
            self._busy_end = self._t
        self.busy = busy

    def nvmlDeviceGetTotalEnergyConsumption(self, h):
        if not self.counter:
            raise self.NVMLError("Not Supported")
        self._advance()
        return self._shown_mj

    def nvmlDeviceGetPowerUsage(self, h):
        self._advance()
        return int(self._shown_w * 1000)


def _coarse_window(fake: CoarseNvml, window_s: float = 1.0, idle_s: float = 0.6, **kw) -> dict:
    def work(_):
        fake.set_busy(True)
        time.sleep(0.003)

    try:
        return measure_window(work, None, batch=4, window_s=window_s, device="cuda", idle_s=idle_s,
                              gpu_min_window_s=window_s, sample_interval_s=0.01, rapl_root="/nonexistent", nvml=fake,
                              gpu_index=0, **kw)
    finally:
        fake.set_busy(False)


def test_coarse_counter_period_is_measured_and_the_window_is_aligned_to_it():
    fake = CoarseNvml(period=0.1, jitter=0.015)
    f = _coarse_window(fake)
    assert f["energy_gpu_counter_period_s"] == pytest.approx(0.1, abs=0.01)
    assert re.search(r"updating every (9\d|10\d|110) ms", f["energy_gpu_method"]) and "calls only" in f["energy_gpu_method"]
    # The window runs from one counter update to another (to the poll's resolution)...
    window = f["energy_gpu_window_s"]
    assert window >= 1.0
    # ...so the energy per image is right to a few percent, where a read at arbitrary instants of a
    # 100 ms counter could be off by 2 x 100 ms x 150 W = 30 J in a 1 s window (20 %).
    truth = (150.0 - 50.0) * window / f["energy_images"]
    assert f["energy_gpu_j_per_image"] == pytest.approx(truth, rel=0.05)
    assert f["energy_gpu_idle_w"] == pytest.approx(50.0, rel=0.03)
    assert 0 < f["energy_gpu_uncertainty_j"] < 0.2 * f["energy_gpu_net_j"]
    assert f["energy_gpu_j_per_image_uncertainty"] == pytest.approx(f["energy_gpu_uncertainty_j"] / f["energy_images"])


def test_window_is_widened_to_ten_counter_periods():
    fake = CoarseNvml(period=0.08, jitter=0.01)
    f = _coarse_window(fake, window_s=0.2)
    assert f["energy_window_min_s"] >= 10 * f["energy_gpu_counter_period_s"] * 0.99
    assert f["energy_gpu_window_s"] >= 0.75


def test_idle_waits_for_the_draw_to_settle():
    fake = CoarseNvml(period=0.02, jitter=0.003, tau=0.15)
    fake.set_busy(True)
    time.sleep(0.05)
    fake.set_busy(False)  # the board is still hot: power decays to idle over ~0.5 s
    f = _coarse_window(fake, window_s=0.5, idle_s=0.3)
    assert f["energy_gpu_idle_settle_s"] > 0.2
    assert f["energy_gpu_idle_w"] == pytest.approx(50.0, rel=0.05)  # not the hot board's draw
    assert "settled" in f["energy_gpu_method"]


def test_a_draw_that_never_settles_is_unavailable():
    fake = CoarseNvml(period=0.02, jitter=0.003, tau=1.0)  # still cooling after the 0.3 s allowed
    fake.set_busy(True)
    time.sleep(0.02)
    fake.set_busy(False)
    g = GpuEnergy(nvml=fake, settle_max_s=0.3)
    g.start_idle()
    time.sleep(0.1)
    g.stop_idle()
    with g:
        time.sleep(0.05)
    assert g.fields(10)["energy_gpu_j_per_image"].startswith("unavailable: the board's power did not settle")


def test_a_counter_that_stops_updating_is_unavailable():
    fake = CoarseNvml(period=0.05, jitter=0.005, stall_after=0.9)
    f = _coarse_window(fake, window_s=0.5, idle_s=0.4)
    assert f["energy_gpu_j_per_image"].startswith("unavailable: ")
    assert "counter" in f["energy_gpu_j_per_image"]
    assert f["energy_window_s"] < 0.5 + 3 * 0.05 + 1.5  # the window gave up instead of waiting for ever


def test_a_counter_too_coarse_for_the_idle_measurement_is_unavailable():
    fake = CoarseNvml(period=0.5, jitter=0.0)
    f = _coarse_window(fake, window_s=0.3, idle_s=0.3)
    assert f["energy_gpu_j_per_image"].startswith("unavailable: the energy counter updated")


def test_power_sampling_with_gaps_is_unavailable():
    class Stalling(CoarseNvml):
        def nvmlDeviceGetPowerUsage(self, h):
            if self.busy and self.rng.random() < 0.3:
                time.sleep(0.06)  # a driver call that blocks: the sampler misses the window's middle
            return super().nvmlDeviceGetPowerUsage(h)

    fake = Stalling(period=0.01, jitter=0.0, counter=False)
    f = _coarse_window(fake, window_s=0.5, idle_s=0.2)
    assert f["energy_gpu_j_per_image"].startswith("unavailable: power samples leave a")
    assert f["energy_gpu_sample_coverage"] < 1.0


def test_power_sampling_with_full_coverage_reports_an_uncertainty():
    fake = CoarseNvml(period=0.01, jitter=0.002, counter=False)
    f = _coarse_window(fake, window_s=0.6, idle_s=0.3)
    assert f["energy_gpu_sample_coverage"] > 0.5
    assert isinstance(f["energy_gpu_j_per_image"], float) and f["energy_gpu_uncertainty_j"] > 0
