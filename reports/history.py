"""Reading saved pytest-benchmark histories (``.benchmarks/<machine>/NNNN_*.json``).

Only reads; never reruns anything. A missing, truncated or foreign file gives a
:class:`HistoryError` naming it; :func:`load_histories` prints those to stderr and goes on
with the other files.
"""
from __future__ import annotations

import json
import math
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, TextIO

DEFAULT_ROOT = Path(".benchmarks")
HISTORY_NAME = re.compile(r"^\d{4}_.*\.json$")
KEY_FIELDS = ("model", "dataset", "variant", "backend", "batch")


class HistoryError(Exception):
    """A file that is not a readable squeezebench history; the message names the file."""


def num(v: Any) -> float | None:
    """A finite number, or None (for None, "unavailable: ..." strings, NaN)."""
    if isinstance(v, bool) or v is None:
        return None
    if isinstance(v, (int, float)):
        return float(v) if math.isfinite(v) else None
    return None


@dataclass
class Record:
    info: dict  # extra_info
    name: str
    stats: dict
    history: "History | None" = field(default=None, repr=False)

    @property
    def key(self) -> tuple:
        return tuple(self.info.get(k) for k in KEY_FIELDS)

    @property
    def label(self) -> str:
        m, d, v, b, n = self.key
        return f"{m}/{d} {v} {b} b{n}"

    def __getitem__(self, k: str) -> Any:
        return self.info.get(k)

    def get(self, k: str, default: Any = None) -> Any:
        return self.info.get(k, default)

    def n(self, k: str) -> float | None:
        return num(self.info.get(k))

    def latency_us(self, stat: str = "median") -> float | None:
        """Per-image time: ``median`` (per_image_us), ``mean``, or ``min`` (the fastest round,
        from pytest-benchmark's stats: the least disturbed by other load on the machine)."""
        if stat == "median":
            return self.n("per_image_us")
        if stat == "mean":
            return self.n("latency_mean_us")
        if stat == "min":
            m, b = num(self.stats.get("min")), self.n("batch")
            return m / b * 1e6 if m is not None and b else None
        raise ValueError(f"unknown latency statistic {stat!r}")

    @property
    def per_image_s(self) -> float | None:
        us = self.n("per_image_us")
        return us / 1e6 if us is not None else None

    def size(self) -> tuple[float | None, str]:
        """Bytes a deployment ships, and which field it is: compressed_bytes where recorded,
        else artifact_bytes."""
        c = self.n("compressed_bytes")
        if c is not None:
            return c, "compressed_bytes"
        return self.n("artifact_bytes"), "artifact_bytes"

    def energy_j_per_image(self) -> tuple[float | None, str | None]:
        """Measured joules per image (GPU on CUDA backends, else CPU package), and the source."""
        for k in ("energy_gpu_j_per_image", "energy_cpu_j_per_image"):
            v = self.n(k)
            if v is not None:
                return v, k
        return None, None

    @property
    def sparsity(self) -> float | None:
        p, nz = self.n("params"), self.n("nonzero_params")
        return 1.0 - nz / p if p and nz is not None else None


@dataclass
class Machine:
    key: str
    label: str
    facts: dict


@dataclass
class History:
    path: Path
    machine_info: dict
    commit_info: dict
    datetime: str
    records: list[Record]
    ignored: int = 0  # benchmarks in the file that are not squeezebench records

    @property
    def machine(self) -> Machine:
        return machine_of(self.machine_info)

    @property
    def commit(self) -> str:
        c = self.commit_info or {}
        cid = str(c.get("id") or "unknown")[:10]
        return cid + (" (dirty)" if c.get("dirty") else "")

    def by_key(self) -> dict[tuple, Record]:
        return {r.key: r for r in self.records}


def machine_of(mi: dict) -> Machine:
    """Which machine a history comes from: node, CPU and GPUs (pytest-benchmark's machine_info
    plus squeezebench's facts)."""
    sb = mi.get("squeezebench") or {}
    cpu = sb.get("cpu_model") or (mi.get("cpu") or {}).get("brand_raw") or mi.get("processor") or mi.get("machine") or "?"
    gpus = [g for g in (sb.get("gpus") or []) if g and g != "none"]
    node = mi.get("node") or "?"
    key = "|".join([node, cpu, ",".join(gpus)])
    label = f"{node} ({cpu}" + (f"; {', '.join(gpus)}" if gpus else "") + ")"
    facts = {
        "node": node, "cpu": cpu, "gpus": ", ".join(gpus) or "none",
        "cores available": sb.get("cpu_cores_available", (mi.get("cpu") or {}).get("count")),
        "threads": sb.get("threads"), "memory GiB": sb.get("memory_gib"),
        "python": mi.get("python_version"), "system": f"{mi.get('system', '')} {mi.get('release', '')}".strip(),
        "profile": sb.get("profile"),
    }
    for lib, ver in (sb.get("libraries") or {}).items():
        facts[lib] = ver
    return Machine(key, label, facts)


def load_history(path: str | Path) -> History:
    """One pytest-benchmark JSON file with squeezebench records, or a HistoryError naming it."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise HistoryError(f"{p}: no such file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise HistoryError(f"{p}: cannot read ({type(e).__name__}: {e})") from None
    if not text.strip():
        raise HistoryError(f"{p}: empty file (truncated?)")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        end = text.rstrip()[-1:]
        hint = "truncated" if end not in ("}", "]") or e.pos >= len(text.rstrip()) - 1 else "invalid"
        raise HistoryError(f"{p}: {hint} JSON ({e.msg} at line {e.lineno}, column {e.colno})") from None
    if not isinstance(data, dict) or not isinstance(data.get("benchmarks"), list):
        raise HistoryError(f"{p}: not a pytest-benchmark history (no 'benchmarks' list)")
    if not isinstance(data.get("machine_info"), dict):
        raise HistoryError(f"{p}: not a pytest-benchmark history (no 'machine_info')")
    h = History(p, data["machine_info"], data.get("commit_info") or {}, str(data.get("datetime") or ""), [])
    for b in data["benchmarks"]:
        info = b.get("extra_info") if isinstance(b, dict) else None
        if not isinstance(info, dict) or "schema" not in info or any(k not in info for k in KEY_FIELDS):
            h.ignored += 1
            continue
        h.records.append(Record(info, str(b.get("name", "")), b.get("stats") or {}, h))
    if not h.records:
        raise HistoryError(f"{p}: a pytest-benchmark history with no squeezebench records "
                           f"({len(data['benchmarks'])} benchmarks, none with squeezebench extra_info)")
    return h


def _newest_per_machine(root: Path) -> list[Path]:
    files = [f for f in root.rglob("*.json") if HISTORY_NAME.match(f.name)]
    newest: dict[Path, Path] = {}
    for f in sorted(files, key=lambda f: (f.parent, f.name)):
        newest[f.parent] = f  # NNNN_ names sort by run number
    return sorted(newest.values())


def expand_paths(paths: Iterable[str | Path], *, every: bool = False) -> list[Path]:
    """Files as given; a directory gives the newest ``NNNN_*.json`` of each machine folder in it
    (every one of them with ``every``). No paths: ``.benchmarks`` here."""
    paths = list(paths) or [DEFAULT_ROOT]
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = (sorted(f for f in p.rglob("*.json") if HISTORY_NAME.match(f.name)) if every
                     else _newest_per_machine(p))
            out.extend(found or [p])  # an empty dir is reported by load_histories
        else:
            out.append(p)
    return out


def load_histories(paths: Iterable[str | Path], *, every: bool = False,
                   err: TextIO | None = None) -> list[History]:
    """Every readable history among ``paths``; each unreadable one is named on ``err``."""
    err = err or sys.stderr
    paths = list(paths)
    if not paths and not DEFAULT_ROOT.is_dir():
        print(f"reports: no {DEFAULT_ROOT}/ here; name history files or directories "
              "(run the benchmarks with --benchmark-autosave to make one)", file=err)
        return []
    out = []
    for p in expand_paths(paths, every=every):
        if p.is_dir():
            print(f"reports: {p}: no pytest-benchmark history (NNNN_*.json) in this directory", file=err)
            continue
        try:
            h = load_history(p)
        except HistoryError as e:
            print(f"reports: skipped {e}", file=err)
            continue
        out.append(h)
    return out


def group_by_machine(histories: list[History]) -> dict[str, list[History]]:
    groups: dict[str, list[History]] = {}
    for h in histories:
        groups.setdefault(h.machine.key, []).append(h)
    for hs in groups.values():
        hs.sort(key=lambda h: (h.datetime, h.path.name))
    return groups
