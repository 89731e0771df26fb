"""The latency gate's statistics and tolerances: what ``compare`` decides a regression is.

Latency (pyperf / asv ``continuous`` / Google Benchmark's ``compare.py``, adapted):

1. Each record carries ``latency_blocks_us``: medians of consecutive blocks of its timed rounds
   (squeezebench.record). Blocks, not rounds, because rounds are autocorrelated (a noisy second
   moves hundreds of them together) and a history file must stay small.
2. A robust **machine-speed factor**: the median, over every record valid in both runs, of NEW's
   median over BASE's. A uniformly slower machine (or harness) divides out; one record getting
   slower does not move a median of many.
3. Per record, NEW's blocks divided by that factor are compared with BASE's by a one-sided
   Mann-Whitney U test (scipy.stats). A record **regresses** when the test is significant
   (p < ``latency_alpha``) *and* its normalised slowdown exceeds ``latency_tol``: significance alone
   would flag 1 % changes between two quiet runs (blocks share the run's state, so their test
   understates run-to-run variance); the tolerance alone would flag noise on short records.

Every record is gated this way, the fp32 torch-cpu reference included. Histories whose records
predate blocks fall back to ``compare``'s in-run ratio to the fp32 torch-cpu record.

Tolerances come from ``[tool.squeezebench.gate]`` (squeezebench.config), with globs over test ids
(``lenet5-mnist-fp32-onnxruntime-b1``) for groups; command-line options override both.
"""
from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field, fields, replace

import numpy as np
from scipy.stats import mannwhitneyu

from squeezebench.reports.history import History, Record

MIN_RECORDS_FOR_FACTOR = 5  # with fewer, a single record's change would move the "machine" factor
MIN_BLOCKS = 5  # a rank test on fewer blocks per side cannot reach a useful p-value


@dataclass(frozen=True)
class Tolerances:
    """One group's bounds. ``latency_tol`` and ``size_tol`` are fractions (0.1 = 10 %), ``top1_tol``
    percentage points, ``int8_share_tol`` a share of MACs (0..1)."""

    top1_tol: float = 0.5
    size_tol: float = 0.001
    latency_tol: float = 0.10
    latency_alpha: float = 0.001
    energy_tol: float = 0.25
    int8_share_tol: float = 0.05

    def __post_init__(self) -> None:
        for f in fields(self):
            v = getattr(self, f.name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0:
                raise ValueError(f"gate tolerance {f.name} must be a number >= 0, got {v!r}")
        if not 0 < self.latency_alpha < 1:
            raise ValueError(f"latency_alpha must be in (0, 1), e.g. 0.001; got {self.latency_alpha!r}")


TOLERANCE_KEYS = {f.name.replace("_", "-"): f.name for f in fields(Tolerances)}


@dataclass(frozen=True)
class GatePolicy:
    """Defaults, then each group whose glob matches the record's test id, in file order (a later
    group overrides an earlier one), then the command line's overrides."""

    defaults: Tolerances = field(default_factory=Tolerances)
    groups: tuple[tuple[str, dict], ...] = ()
    overrides: dict = field(default_factory=dict)

    @classmethod
    def from_config(cls, gate: dict | None, overrides: dict | None = None) -> "GatePolicy":
        """``gate`` as squeezebench.config validated it: tolerance keys and ``groups``."""
        gate = dict(gate or {})
        groups = gate.pop("groups", {}) or {}
        base = Tolerances(**{TOLERANCE_KEYS[k]: v for k, v in gate.items()})
        conv = tuple((glob, {TOLERANCE_KEYS[k]: v for k, v in t.items()}) for glob, t in groups.items())
        clean = {k: v for k, v in (overrides or {}).items() if v is not None}
        policy = cls(base, conv, clean)
        policy.for_id("check")  # every combination must be valid: fail now, not per record
        for glob, _ in conv:
            policy.for_id(glob)
        return policy

    def for_id(self, record_id: str) -> Tolerances:
        t = self.defaults
        for glob, values in self.groups:
            if fnmatch.fnmatchcase(record_id, glob):
                t = replace(t, **values)
        return replace(t, **self.overrides) if self.overrides else t

    def for_record(self, rec: Record) -> Tolerances:
        return self.for_id(record_id(rec))


def record_id(rec: Record) -> str:
    """The parametrize id (``model-dataset-variant-backend-b<batch>``) from the test name, or built
    from the record's fields for a record saved under another test name."""
    name = rec.name
    if "[" in name and name.endswith("]"):
        return name[name.index("[") + 1:-1]
    m, d, v, b, n = rec.key
    return f"{m}-{d}-{v}-{b}-b{n}"


def blocks(rec: Record) -> np.ndarray | None:
    b = rec.get("latency_blocks_us")
    if not isinstance(b, list) or len(b) < MIN_BLOCKS:
        return None
    arr = np.asarray([x for x in b if isinstance(x, (int, float))], dtype=np.float64)
    return arr if len(arr) >= MIN_BLOCKS and np.all(arr > 0) else None


def median_latency(rec: Record) -> float | None:
    b = blocks(rec)
    return float(np.median(b)) if b is not None else rec.n("per_image_us")


@dataclass
class MachineFactor:
    value: float
    records: int
    note: str


def machine_factor(pairs: list[tuple[Record, Record]]) -> MachineFactor:
    """Median of NEW/BASE median latency over ``pairs`` (both valid); 1.0 when too few records."""
    ratios = [n / b for b, n in ((median_latency(b), median_latency(n)) for b, n in pairs)
              if b and n]
    if len(ratios) < MIN_RECORDS_FOR_FACTOR:
        return MachineFactor(1.0, len(ratios), f"machine factor not estimated: {len(ratios)} comparable records "
                                               f"(needs {MIN_RECORDS_FOR_FACTOR}); latency compared as measured")
    f = float(np.median(ratios))
    return MachineFactor(f, len(ratios), f"machine-speed factor NEW/BASE = {f:.3f} (median over {len(ratios)} "
                                         "records); NEW latencies divided by it before they are judged")


@dataclass
class LatencyTest:
    ratio: float  # NEW median / factor / BASE median
    p_slower: float  # one-sided Mann-Whitney U: NEW (normalised) slower than BASE
    p_faster: float
    n_base: int
    n_new: int

    def regressed(self, tol: Tolerances) -> bool:
        return self.p_slower < tol.latency_alpha and self.ratio > 1 + tol.latency_tol

    def improved(self, tol: Tolerances) -> bool:
        return self.p_faster < tol.latency_alpha and self.ratio < 1 / (1 + tol.latency_tol)

    def text(self) -> str:
        return f"{self.ratio - 1:+.1%} (p={min(self.p_slower, self.p_faster):.2g}, {self.n_base}+{self.n_new} blocks)"


def latency_test(base: Record, new: Record, factor: float) -> LatencyTest | None:
    """The normalised rank test of ``new`` against ``base``; None when either lacks blocks."""
    a, b = blocks(base), blocks(new)
    if a is None or b is None:
        return None
    b = b / factor
    slower = mannwhitneyu(b, a, alternative="greater").pvalue
    faster = mannwhitneyu(b, a, alternative="less").pvalue
    return LatencyTest(float(np.median(b) / np.median(a)), float(slower), float(faster), len(a), len(b))


def pooled(histories: list[History]) -> History:
    """Several runs of one commit as one: each record's blocks concatenated (per_image_us becomes
    their median), everything else from the first run that has the record. For A/B gates that
    interleave runs (asv ``continuous``): pooling spreads run-to-run variance into the test."""
    if len(histories) == 1:
        return histories[0]
    first = histories[0]
    merged: dict[tuple, Record] = {}
    for h in histories:
        for r in h.records:
            if r.key not in merged:
                merged[r.key] = Record(dict(r.info), r.name, dict(r.stats))
                continue
            m = merged[r.key]
            a, b = m.get("latency_blocks_us"), r.get("latency_blocks_us")
            if isinstance(a, list) and isinstance(b, list):
                m.info["latency_blocks_us"] = a + b
                m.info["per_image_us"] = float(np.median(a + b))
            if not r.valid:  # one invalid run makes the pooled record invalid
                m.info["valid"] = False
                m.info["invalid_reasons"] = list(m.get("invalid_reasons") or []) + list(r.get("invalid_reasons") or [])
    out = History(first.path, first.machine_info, first.commit_info, first.datetime, list(merged.values()))
    for r in out.records:
        r.history = out
        r.info["pooled_runs"] = len(histories)
    return out
