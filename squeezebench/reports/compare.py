"""Direction-aware regression gates between two histories: BASE (before) and NEW (after).

Per record (model/dataset/variant/backend/batch) and metric, with tolerances per group of test
ids (squeezebench.reports.gate: ``[tool.squeezebench.gate]``, options override):

- top-1: regresses when NEW is lower by more than ``top1_tol`` percentage points;
- sizes (artifact_bytes, compressed_bytes): regress when larger by more than ``size_tol``;
- latency, every record including the fp32 reference: NEW's block medians, divided by the
  machine-speed factor of the two runs, against BASE's by a one-sided Mann-Whitney U test;
  regresses when significant (``latency_alpha``) and slower by more than ``latency_tol`` (see
  squeezebench.reports.gate). Records without blocks (older histories) fall back to the ratio to
  the fp32 torch-cpu record of the same run. Absolute times are shown, gated with
  ``gate_absolute``;
- energy per image (GPU, CPU): regresses when higher by more than ``energy_tol``;
- the int8 share (MACs run in int8): regresses when it drops by more than ``int8_share_tol``;
- a number in BASE that NEW reports as unavailable (or drops) regresses.

Records of BASE missing in NEW are reported (and fail unless ``allow_missing``).

Validity (see Record.validity): a record whose guardrail or parity check failed is a failed
measurement. An invalid BASE record is no baseline: it is not compared against and fails
nothing. Every invalid record of NEW fails the gate (verdict INVALID, with its reasons), and
latency ratios never divide by an invalid fp32 record.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from squeezebench.reports.analysis import RATIO_BACKEND, latency_ratio, no_baseline_reason
from squeezebench.reports.gate import GatePolicy, Tolerances, latency_test, machine_factor
from squeezebench.reports.history import History, Record, num
from squeezebench.reports.tables import Table

DEFAULTS = {k: getattr(Tolerances(), k) for k in ("top1_tol", "size_tol", "latency_tol", "energy_tol")}
# Numbers whose turning into "unavailable: ..." (or vanishing) in NEW is a regression: a gate that
# only compares numbers would pass a run that stopped measuring them.
TRACKED_NUMBERS = ("top1", "per_image_us", "artifact_bytes", "compressed_bytes", "int8_share",
                   "energy_gpu_j_per_image", "energy_cpu_j_per_image", "parity_agreement")
LATENCY_MODES = ("auto", "ratio", "off")

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


def compare_runs(base: History, new: History, *, policy: GatePolicy | None = None,
                 top1_tol: float | None = None, size_tol: float | None = None, latency_tol: float | None = None,
                 energy_tol: float | None = None, gate_absolute: bool = False,
                 ratio_backend: str = RATIO_BACKEND, latency_stat: str = "median", latency: str = "auto") -> Result:
    """Gate NEW against BASE. ``policy`` holds the tolerances (default: GatePolicy()); the ``*_tol``
    arguments override it for every record. ``latency``: ``auto`` (rank test on blocks where both
    records have them, else the in-run ratio), ``ratio`` (in-run ratio only) or ``off`` (not
    gated: runs from different machines, e.g. against a committed reference)."""
    if latency not in LATENCY_MODES:
        raise ValueError(f"latency must be one of {LATENCY_MODES}, got {latency!r}")
    overrides = {"top1_tol": top1_tol, "size_tol": size_tol, "latency_tol": latency_tol, "energy_tol": energy_tol}
    policy = GatePolicy(policy.defaults, policy.groups, {**policy.overrides, **{k: v for k, v in overrides.items()
                                                                              if v is not None}}) \
        if policy else GatePolicy.from_config(None, overrides)
    res = Result()
    same_machine = base.machine.key == new.machine.key
    if not same_machine:
        res.notes.append(f"BASE ran on {base.machine.label}, NEW on {new.machine.label}: absolute times "
                         "are not comparable" + ("" if latency == "off" else "; latency is judged after the "
                                                 "machine-speed factor divides out"))
    nb = new.by_key()
    base_keys = base.by_key()
    pairs = [(b, nb[k]) for k, b in base_keys.items() if k in nb and b.valid and nb[k].valid]
    factor = machine_factor(pairs)
    if latency == "auto":
        res.notes.append(factor.note)
    elif latency == "off":
        res.notes.append("latency not gated (--latency off)")
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
        tol = policy.for_record(n)
        found = _compare_record(b, n, base.records, new.records, tol, gate_absolute, ratio_backend,
                                latency_stat, latency, factor.value)
        if found:
            res.changes += found
        elif n.valid:  # same numbers but a failed check is no "identical"
            res.unchanged += 1
    for key, n in nb.items():
        if key not in base_keys:
            res.added.append(n.label)
            res.changes.append(Change(n.label, "record", "absent", "present", "", ADDED))
    return res


def _compare_record(b: Record, n: Record, base_run: list[Record], new_run: list[Record], tol: Tolerances,
                    gate_absolute: bool, ratio_backend: str, stat: str = "median", latency: str = "auto",
                    factor: float = 1.0) -> list[Change]:
    label, out = b.label, []
    for k in TRACKED_NUMBERS:  # measured before, not any more
        if num(b.get(k)) is not None and num(n.get(k)) is None:
            out.append(Change(label, k, f"{num(b.get(k)):.4g}", str(n.get(k, "absent"))[:80], "", REGRESSED))
    t0, t1 = b.n("top1"), n.n("top1")
    if t0 is not None and t1 is not None and t0 != t1:
        verdict = REGRESSED if t1 < t0 - tol.top1_tol else (IMPROVED if t1 > t0 else OK)
        out.append(Change(label, "top1 %", f"{t0:.2f}", f"{t1:.2f}", f"{t1 - t0:+.2f} pp", verdict))
    for k in ("artifact_bytes", "compressed_bytes"):
        c = _higher_is_worse(label, k, b.n(k), n.n(k), tol.size_tol, " B", fmt="{:.0f}")
        if c:
            out.append(c)
    s0, s1 = b.n("int8_share"), n.n("int8_share")
    if s0 is not None and s1 is not None and s0 != s1:
        verdict = REGRESSED if s1 < s0 - tol.int8_share_tol else (IMPROVED if s1 > s0 else OK)
        out.append(Change(label, "int8 share of MACs", f"{s0:.3f}", f"{s1:.3f}", f"{s1 - s0:+.3f}", verdict))
    test = latency_test(b, n, factor) if latency == "auto" and stat == "median" else None
    if test is not None:
        verdict = REGRESSED if test.regressed(tol) else (IMPROVED if test.improved(tol) else OK)
        what = "latency (normalised, rank test)"
        if verdict != OK or abs(test.ratio - 1) > tol.latency_tol:
            out.append(Change(label, what, f"{b.n('per_image_us'):.4g} µs", f"{n.n('per_image_us') / factor:.4g} µs",
                              test.text(), verdict))
    elif latency != "off":
        out += _ratio_change(b, n, base_run, new_run, tol, ratio_backend, stat)
    c = _higher_is_worse(label, f"{'per_image_us' if stat == 'median' else stat + ' µs/image'} (absolute)",
                         b.latency_us(stat), n.latency_us(stat), tol.latency_tol, " µs",
                         gated=gate_absolute and latency != "off")
    if c:
        out.append(c)
    for k in ("energy_gpu_j_per_image", "energy_cpu_j_per_image"):
        c = _higher_is_worse(label, k, b.n(k), n.n(k), tol.energy_tol, " J")
        if c:
            out.append(c)
    return out


def _ratio_change(b: Record, n: Record, base_run: list[Record], new_run: list[Record], tol: Tolerances,
                  ratio_backend: str, stat: str) -> list[Change]:
    """The fallback for records without blocks: each run's ratio to its fp32 ``ratio_backend`` record."""
    r0, r1 = latency_ratio(b, base_run, ratio_backend, stat), latency_ratio(n, new_run, ratio_backend, stat)
    what = f"{'' if stat == 'median' else stat + ' '}latency / fp32 {ratio_backend} (same run)"
    is_ref = b["variant"] == "fp32" and b["backend"] == ratio_backend
    if r0 is not None and r1 is not None and not is_ref:
        c = _higher_is_worse(b.label, what, r0, r1, tol.latency_tol, "x", fmt="{:.3f}")
        return [c] if c else []
    if not is_ref and (r0 is None) != (r1 is None):
        which, run = ("BASE", base_run) if r0 is None else ("NEW", new_run)
        return [Change(b.label, what, _r(r0), _r(r1), "",
                       f"not judged: {no_baseline_reason(b if r0 is None else n, run, ratio_backend)} in {which}")]
    return []


def _r(v: float | None) -> str:
    return "—" if v is None else f"{v:.3f}x"
