"""Derived views of records: in-run latency ratios, "is this compression real?", Pareto fronts."""
from __future__ import annotations

import re
from dataclasses import dataclass

from squeezebench.reports.history import Record

BASELINE_VARIANT = "fp32"
RATIO_BACKEND = "torch-cpu"


def baseline_of(rec: Record, records: list[Record], backend: str | None = None, *,
                valid_only: bool = True) -> Record | None:
    """The fp32 record of the same model/dataset/batch (and ``backend``, default the record's own)
    among ``records`` (one run). An invalid one (failed guardrail or parity) is no baseline:
    None unless ``valid_only`` is off."""
    m, d, _, b, n = rec.key
    want = (m, d, BASELINE_VARIANT, backend or b, n)
    for r in records:
        if r.key == want:
            return r if r.valid or not valid_only else None
    return None


def no_baseline_reason(rec: Record, records: list[Record], backend: str | None = None) -> str:
    """Why baseline_of gives None: 'no fp32 <backend> record' or 'the fp32 <backend> record is invalid'."""
    b = backend or rec["backend"]
    found = baseline_of(rec, records, backend, valid_only=False)
    return f"no fp32 {b} record" if found is None else f"the fp32 {b} record is invalid"


def latency_ratio(rec: Record, records: list[Record], backend: str = RATIO_BACKEND,
                  stat: str = "median") -> float | None:
    """per_image_us (or another ``stat``, see Record.latency_us) over the fp32 ``backend`` record
    of the same model/dataset/batch in the same run: machine speed cancels out, what compression
    and runtime do remains. None when that record is missing or invalid."""
    base = baseline_of(rec, records, backend)
    a, b = rec.latency_us(stat), base.latency_us(stat) if base else None
    return a / b if a is not None and b else None


def speedup_interval(base: Record, rec: Record) -> tuple[float, float] | None:
    """The speedup's range between the two medians' 95 % intervals: (base low / rec high, base high / rec low)."""
    b, r = base.get("latency_p50_ci95_us"), rec.get("latency_p50_ci95_us")
    if not (isinstance(b, (list, tuple)) and isinstance(r, (list, tuple)) and r[0] and r[1]):
        return None
    return b[0] / r[1], b[1] / r[0]



@dataclass
class Reality:
    record: Record
    baseline: Record | None  # None: the fp32 record is invalid (flag says so)
    speedup: float | None  # baseline time / variant time (>1 = faster)
    mac_reduction: float | None  # baseline MACs / variant MACs
    nonzero_reduction: float | None  # baseline nonzero weights / variant's
    size_reduction: float | None  # baseline bytes / variant bytes (same size field)
    size_field: str
    flag: str  # "" or why the compression is not real here
    band: tuple[float, float] | None = None  # the speedup between the medians' 95 % interval ends
    change: str = ""  # faster / slower / no measurable change (by band), "" without intervals


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def compression_reality(records: list[Record], *, min_reduction: float = 1.1,
                        min_speedup: float = 1.05) -> list[Reality]:
    """For each variant: measured speedup over fp32 on the same backend/batch/model/dataset, beside
    its reductions in MACs, nonzero weights and bytes. Flags a variant whose size or nonzero
    count went down by ``min_reduction``x or more while it did not get measurably faster: judged
    by the speedup's interval (``band``) where both records carry a median interval, else by
    ``min_speedup``."""
    out = []
    for r in records:
        if r["variant"] == BASELINE_VARIANT:
            continue
        ok, reasons = r.validity()
        base = baseline_of(r, records)
        if base is None or not ok:
            if not ok or baseline_of(r, records, valid_only=False) is not None:
                why = ("INVALID: " + "; ".join(reasons)) if not ok else \
                    f"not compared: {no_baseline_reason(r, records)} (not a baseline)"
                out.append(Reality(r, base, None, None, None, None, r.size()[1], why))
            continue
        rs, field = r.size()
        bs, bfield = base.size()
        if field != bfield:  # compare like with like
            rs, bs, field = r.n("artifact_bytes"), base.n("artifact_bytes"), "artifact_bytes"
        speedup = _ratio(base.n("per_image_us"), r.n("per_image_us"))
        macs = _ratio(base.n("macs"), r.n("macs"))
        nz = _ratio(base.n("nonzero_params"), r.n("nonzero_params"))
        size = _ratio(bs, rs)
        band = speedup_interval(base, r)
        change = "" if band is None else ("faster" if band[0] > 1 else "slower" if band[1] < 1
                                           else "no measurable change")
        # By the interval where both records carry one (a 1.26x inside the noise is no speedup),
        # else by min_speedup.
        not_faster = change != "faster" if band is not None else speedup is not None and speedup < min_speedup
        flag = ""
        smaller = [what for what, v in (("nonzero weights", nz), ("bytes", size), ("MACs", macs))
                   if v is not None and v >= min_reduction]
        if not_faster and smaller:
            how = f"{change}: {speedup:.2f}x, interval {band[0]:.2f}-{band[1]:.2f}x" if band else f"{speedup:.2f}x"
            flag = f"{' and '.join(smaller)} down, time not ({how})"
            if nz is not None and nz >= min_reduction and (macs is None or macs < min_reduction):
                flag += ": dense kernels ignore zeros"
        out.append(Reality(r, base, speedup, macs, nz, size, field, flag, band, change))
    return out


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of points (size, accuracy) that no other point beats: no other is at most as
    large and at least as accurate with one of the two strict. Sorted by size."""
    idx = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1]))
    front, best = [], float("-inf")
    for i in idx:
        if points[i][1] > best:
            front.append(i)
            best = points[i][1]
    return front


KD = re.compile(r"^kd-t(?P<t>\d+(?:\.\d+)?)(?:-a(?P<a>\d+(?:\.\d+)?))?$")
PRECISION_BITS = {"fp64": 64, "fp32": 32, "fp16": 16, "bf16": 16, "int8": 8}


def distill_temperature(variant: str) -> tuple[float, float | None] | None:
    """(temperature, alpha) of a plain distillation variant ``kd-tN[-aX]``, else None."""
    m = KD.match(variant)
    return (float(m["t"]), float(m["a"]) if m["a"] else None) if m else None


def bits_per_weight(rec: Record) -> int:
    """Bits per stored weight of a variant: recorded bits_per_weight, else from its id."""
    b = rec.n("bits_per_weight")
    if b:
        return int(b)
    toks = str(rec["variant"]).split("+")
    for t in reversed(toks):
        for p, bits in PRECISION_BITS.items():
            if t.startswith(p):
                return bits
    return 32


def technique_family(variant: str) -> str:
    """A plot legend group for a variant id."""
    toks = variant.split("+")
    names = []
    for t in toks:
        if t.startswith(("prune", "gprune")):
            names.append("prune")
        elif t.startswith("sprune"):
            names.append("structured")
        elif t.startswith("kd-"):
            names.append("distill")
        elif t.startswith("scratch"):
            names.append("scratch")
        elif t.startswith("int8"):
            names.append("int8")
        else:
            # any other technique: its token's leading word (share4 -> share), so a new one
            # gets its own legend group without a line here
            names.append(t if t in PRECISION_BITS else (re.match(r"[a-z]*", t).group() or "other"))
    return "+".join(dict.fromkeys(names)) or "fp32"
