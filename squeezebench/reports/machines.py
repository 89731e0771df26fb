"""Machines side by side: histories from many machines (their storage folders copied under one
root, or several roots, local or fsspec URLs), grouped by machine name, and per record the newest
run's median per-image latency of every machine beside the first machine's."""
from __future__ import annotations

from dataclasses import dataclass

from squeezebench.reports.history import HISTORY_NAME, History, Record, cpu_isa, isa_tier, machine_of
from squeezebench.reports.tables import Table, fmt

ABSENT = "—"


@dataclass
class NamedMachine:
    """One machine's histories, oldest first; ``name`` is what the columns are headed with."""

    name: str
    histories: list[History]

    @property
    def newest(self) -> History:
        return self.histories[-1]

    def latest_records(self) -> dict[tuple, Record]:
        """Per record key, the record of the newest run that holds it (a later run of only some
        models does not hide the others)."""
        out: dict[tuple, Record] = {}
        for h in self.histories:
            out.update(h.by_key())
        return out


def recorded_name(h: History) -> str | None:
    """The name the plugin recorded (``machine_info.squeezebench_machine``), if any."""
    own = h.machine_info.get("squeezebench_machine")
    return own if isinstance(own, str) and own else None


def folder_name(h: History) -> str:
    """A history's machine folder (``.benchmarks/<folder>/NNNN_*.json``); for a file outside that
    layout (``reports/histories/paper-vm-epyc-2core.json``), its own name without ``.json``."""
    return h.path.parent.name if HISTORY_NAME.match(h.path.name) else h.path.name.removesuffix(".json")


def group_by_name(histories: list[History]) -> list[NamedMachine]:
    """Histories grouped by machine name, first seen first: the recorded squeezebench_machine, else
    the folder's name (legacy ``Linux-CPython-3.11-64bit`` folders). One legacy folder name found
    in several places is several machines (every Linux box had that name): each is then labelled
    ``<parent>/<folder>``. A run reached twice (one folder under two roots) counts once."""
    legacy_dirs: dict[str, set[str]] = {}
    for h in histories:
        if recorded_name(h) is None:
            legacy_dirs.setdefault(folder_name(h), set()).add(str(h.path.parent))
    groups: dict[str, list[History]] = {}
    for h in histories:
        name = recorded_name(h)
        if name is None:
            name = folder_name(h)
            if len(legacy_dirs[name]) > 1:
                name = f"{h.path.parent.parent.name}/{name}"
        groups.setdefault(name, []).append(h)
    out = []
    for name, hs in groups.items():
        seen: dict[tuple, History] = {}
        for h in hs:
            seen.setdefault((h.path.name, h.datetime, h.commit), h)
        out.append(NamedMachine(name, sorted(seen.values(), key=lambda h: (h.datetime, h.path.name))))
    return out


def machines_header(machines: list[NamedMachine]) -> Table:
    """One row per machine: its CPU and the kernel flags that decide speed, runs and their dates."""
    rows = []
    for m in machines:
        mi = m.newest.machine_info
        facts = machine_of(mi).facts
        isa = cpu_isa(mi)
        dates = sorted(h.datetime[:10] for h in m.histories if h.datetime)
        span = (dates[0] if dates[0] == dates[-1] else f"{dates[0]} .. {dates[-1]}") if dates else ABSENT
        folders = sorted({str(h.path.parent) for h in m.histories})
        rows.append([m.name, fmt(facts.get("cpu")),
                     (isa_tier(isa) + ": " + (" ".join(isa) or "none")) if isa is not None else "not recorded",
                     fmt(facts.get("cores available")), fmt(facts.get("gpus")),
                     str(len(m.histories)), span, "; ".join(folders)])
    return Table("Machines", ["machine", "CPU", "kernel flags", "cores", "GPUs", "runs", "dates", "folder"], rows,
                 notes=["machine: the name the plugin recorded (--sb-machine, default <host>-<cpuhash>), else "
                        "the storage folder's name (histories saved before squeezebench named machines)."],
                 anchor="machines-side-by-side")


def _sort_key(key: tuple) -> tuple:
    m, d, v, b, n = key
    return (str(d), str(m), v != "fp32", str(v), str(b), n or 0)


def _latency_text(r: Record | None) -> str:
    if r is None:
        return ABSENT
    if not r.valid:
        return "INVALID"
    us = r.n("per_image_us")
    if us is None:
        return ABSENT
    ci = r.get("latency_p50_ci95_us")
    band = f" [{ci[0]:.1f}-{ci[1]:.1f}]" if isinstance(ci, (list, tuple)) and len(ci) == 2 else ""
    return f"{us:.1f}{band}"


def _ratio_text(r: Record | None, first: Record | None) -> str:
    if r is None or first is None or not (r.valid and first.valid):
        return ABSENT
    us, base = r.n("per_image_us"), first.n("per_image_us")
    return f"{us / base:.2f}x" if us is not None and base else ABSENT


def side_by_side(machines: list[NamedMachine]) -> Table:
    """One row per record key; per machine its newest median µs/image (with the 95 % interval
    where recorded) and top-1, and each machine's time over the first machine's."""
    latest = [m.latest_records() for m in machines]
    keys = sorted({k for idx in latest for k in idx}, key=_sort_key)
    cols = ["model", "dataset", "variant", "backend", "batch"]
    for i, m in enumerate(machines):
        cols += [f"{m.name} µs/image p50 [95% CI]", f"{m.name} top-1 %"]
        if i:
            cols.append(f"{m.name} / {machines[0].name}")
    rows = []
    for k in keys:
        row = [str(x) for x in k]
        first = latest[0].get(k)
        for i, idx in enumerate(latest):
            r = idx.get(k)
            row += [_latency_text(r), fmt(r.n("top1")) if r is not None else ABSENT]
            if i:
                row.append(_ratio_text(r, first))
        rows.append(row)
    first = machines[0].name if machines else "the first machine"
    notes = ["Each cell: the newest run of that machine that holds the record. µs/image: median per-image "
             "time, in brackets its 95 % interval where the record carries one (latency_p50_ci95_us).",
             f"/ {first}: the machine's median time over {first}'s (above 1: slower); — where either record "
             "is missing or invalid. — elsewhere: the machine has no such record.",
             "INVALID: the record's top-1 guardrail or parity check failed: a failed measurement, not a result."]
    return Table("Machines side by side", cols, rows, notes=notes, anchor="side-by-side")


def machines_report(histories: list[History], level: int = 2, fmt_: str = "markdown") -> str:
    """The header and the side-by-side table as Markdown (or plain text)."""
    machines = group_by_name(histories)
    tables = [machines_header(machines), side_by_side(machines)]
    if fmt_ == "text":
        return "\n".join(t.text() for t in tables)
    return "\n".join(t.markdown(level) for t in tables)

