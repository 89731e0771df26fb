"""Direction-aware regression gates between two histories: BASE (before) and NEW (after).

Per record (model/dataset/variant/backend/batch) and metric:

- top-1: regresses when NEW is lower by more than ``top1_tol`` percentage points;
- sizes (artifact_bytes, compressed_bytes): regress when larger by more than ``size_tol``;
- latency: judged as a ratio measured *within one run*: per_image_us over the fp32 torch-cpu
  record of the same model/dataset/batch in the same run; regresses when NEW's ratio exceeds
  BASE's by more than ``latency_tol``. A uniformly slower or noisier machine moves both
  numerator and denominator and does not fail. Absolute times are shown, gated only with
  ``gate_absolute``;
- energy per image (GPU, CPU): regresses when higher by more than ``energy_tol``.

Records of BASE missing in NEW are reported (and fail unless ``allow_missing``).

Validity (see Record.validity): a record whose guardrail or parity check failed is a failed
measurement. An invalid BASE record is no baseline: it is not compared against and fails
nothing. Every invalid record of NEW fails the gate (verdict INVALID, with its reasons), and
latency ratios never divide by an invalid fp32 record.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from squeezebench.reports.analysis import RATIO_BACKEND, latency_ratio, no_baseline_reason
from squeezebench.reports.history import History, Record
from squeezebench.reports.tables import Table

DEFAULTS = {"top1_tol": 0.5, "size_tol": 0.001, "latency_tol": 0.25, "energy_tol": 0.25}

OK, REGRESSED, IMPROVED, SHOWN, MISSING, ADDED = "ok", "REGRESSED", "improved", "shown, not gated", "MISSING in NEW", "new in NEW"
INVALID, NOT_A_BASELINE = "INVALID in NEW", "BASE invalid: not a baseline"


@dataclass
class Change:
    record: str
    metric: str
    base: str
    new: str
    change: str
    verdict: str


@dataclass
class Result:
    changes: list[Change] = field(default_factory=list)
    unchanged: int = 0
    compared: int = 0
    missing: list[str] = field(default_factory=list)
    added: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def regressions(self) -> list[Change]:
        return [c for c in self.changes if c.verdict == REGRESSED]

    @property
    def invalid(self) -> list[Change]:
        """NEW's failed measurements: each one fails the gate."""
        return [c for c in self.changes if c.verdict == INVALID]

    @property
    def invalid_base(self) -> list[Change]:
        return [c for c in self.changes if c.verdict == NOT_A_BASELINE]

    def failed(self, allow_missing: bool = False) -> bool:
        return bool(self.regressions) or bool(self.invalid) or (bool(self.missing) and not allow_missing)

    def table(self) -> Table:
        return Table("Changes from BASE to NEW", ["record", "metric", "BASE", "NEW", "change", "verdict"],
                     [[c.record, c.metric, c.base, c.new, c.change, c.verdict] for c in self.changes])


def _pct(a: float, b: float) -> str:
    return f"{(b - a) / a * 100:+.1f}%" if a else "n/a"


def _higher_is_worse(rec: str, metric: str, a: float | None, b: float | None, tol: float, unit: str,
                     gated: bool = True, fmt: str = "{:.4g}") -> Change | None:
    if a is None or b is None or a == b:
        return None
    if not gated:
        verdict = SHOWN
    elif b > a * (1 + tol):
        verdict = REGRESSED
    elif b < a:
        verdict = IMPROVED
    else:
        verdict = OK
    return Change(rec, metric, fmt.format(a) + unit, fmt.format(b) + unit, _pct(a, b), verdict)


def compare_runs(base: History, new: History, *, top1_tol: float = DEFAULTS["top1_tol"],
                 size_tol: float = DEFAULTS["size_tol"], latency_tol: float = DEFAULTS["latency_tol"],
                 energy_tol: float = DEFAULTS["energy_tol"], gate_absolute: bool = False,
                 ratio_backend: str = RATIO_BACKEND, latency_stat: str = "median") -> Result:
    res = Result()
    if base.machine.key != new.machine.key:
        res.notes.append(f"BASE ran on {base.machine.label}, NEW on {new.machine.label}: absolute times "
                         "are not comparable; latency is judged by in-run ratios.")
    nb = new.by_key()
    base_keys = base.by_key()
    for key, n in nb.items():
        ok, reasons = n.validity()
        if not ok:
            b = base_keys.get(key)
            res.changes.append(Change(n.label, "validity", "absent" if b is None else b.validity_text(),
                                      "INVALID: " + "; ".join(reasons), "", INVALID))
    for key, b in base_keys.items():
        n = nb.get(key)
        ok, reasons = b.validity()
        if not ok:  # a failed measurement is nothing to hold NEW to
            res.changes.append(Change(b.label, "record", "INVALID: " + "; ".join(reasons),
                                      "absent" if n is None else n.validity_text(), "", NOT_A_BASELINE))
            continue
        if n is None:
            res.missing.append(b.label)
            res.changes.append(Change(b.label, "record", "present", "absent", "", MISSING))
            continue
        res.compared += 1
        found = _compare_record(b, n, base.records, new.records, top1_tol, size_tol, latency_tol,
                                energy_tol, gate_absolute, ratio_backend, latency_stat)
        if found:
            res.changes += found
        elif n.valid:  # same numbers but a failed check is no "identical"
            res.unchanged += 1
    for key, n in nb.items():
        if key not in base_keys:
            res.added.append(n.label)
            res.changes.append(Change(n.label, "record", "absent", "present", "", ADDED))
    return res


def _compare_record(b: Record, n: Record, base_run: list[Record], new_run: list[Record], top1_tol: float,
                    size_tol: float, latency_tol: float, energy_tol: float, gate_absolute: bool,
                    ratio_backend: str, stat: str = "median") -> list[Change]:
    label, out = b.label, []
    t0, t1 = b.n("top1"), n.n("top1")
    if t0 is not None and t1 is not None and t0 != t1:
        verdict = REGRESSED if t1 < t0 - top1_tol else (IMPROVED if t1 > t0 else OK)
        out.append(Change(label, "top1 %", f"{t0:.2f}", f"{t1:.2f}", f"{t1 - t0:+.2f} pp", verdict))
    for k in ("artifact_bytes", "compressed_bytes"):
        c = _higher_is_worse(label, k, b.n(k), n.n(k), size_tol, " B", fmt="{:.0f}")
        if c:
            out.append(c)
    r0, r1 = latency_ratio(b, base_run, ratio_backend, stat), latency_ratio(n, new_run, ratio_backend, stat)
    what = f"{'' if stat == 'median' else stat + ' '}latency / fp32 {ratio_backend} (same run)"
    is_ref = b["variant"] == "fp32" and b["backend"] == ratio_backend
    if r0 is not None and r1 is not None and not is_ref:
        c = _higher_is_worse(label, what, r0, r1, latency_tol, "x", fmt="{:.3f}")
        if c:
            out.append(c)
    elif not is_ref and (r0 is None) != (r1 is None):
        which, run = ("BASE", base_run) if r0 is None else ("NEW", new_run)
        out.append(Change(label, what, _r(r0), _r(r1), "",
                          f"not judged: {no_baseline_reason(b if r0 is None else n, run, ratio_backend)} in {which}"))
    c = _higher_is_worse(label, f"{'per_image_us' if stat == 'median' else stat + ' µs/image'} (absolute)",
                         b.latency_us(stat), n.latency_us(stat), latency_tol, " µs", gated=gate_absolute)
    if c:
        out.append(c)
    for k in ("energy_gpu_j_per_image", "energy_cpu_j_per_image"):
        c = _higher_is_worse(label, k, b.n(k), n.n(k), energy_tol, " J")
        if c:
            out.append(c)
    return out


def _r(v: float | None) -> str:
    return "—" if v is None else f"{v:.3f}x"
