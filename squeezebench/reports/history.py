"""Reading saved pytest-benchmark histories (``.benchmarks/<machine>/NNNN_*.json``), from local
folders or from fsspec URLs (``s3://bucket/benchmarks``, ``memory://...``; ``file://`` is local).

Only reads; never reruns or writes anything. A missing, truncated or foreign file gives a
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

from squeezebench.machine import KERNEL_FLAGS, kernel_flags

DEFAULT_ROOT = Path(".benchmarks")
HISTORY_NAME = re.compile(r"^\d{4}_.*\.json$")
KEY_FIELDS = ("model", "dataset", "variant", "backend", "batch")
# A record without `parity_min` was checked against this (the harness's default then and now).
DEFAULT_PARITY_MIN = 0.995
INFERRED = "inferred: the record predates the `valid` field"


class HistoryError(Exception):
    """A file that is not a readable squeezebench history; the message names the file."""


class UrlPath(str):
    """An fsspec URL of a history (or of a folder of them), with the few Path attributes the
    reports use: ``name``, ``parent`` and ``is_dir()`` (true only for a folder that held no
    history, which load_histories then names)."""

    folder: bool = False

    def __new__(cls, url: str, folder: bool = False) -> "UrlPath":
        self = super().__new__(cls, url.rstrip("/") if not url.endswith("://") else url)
        self.folder = folder
        return self

    @property
    def name(self) -> str:
        return self.rsplit("/", 1)[-1] if "/" in self.split("://", 1)[-1] else self.split("://", 1)[-1]

    @property
    def parent(self) -> "UrlPath":
        scheme, _, rest = self.partition("://")
        return UrlPath(f"{scheme}://{rest.rsplit('/', 1)[0]}", folder=True) if "/" in rest else self

    def is_dir(self) -> bool:
        return self.folder


def location(p: str | Path) -> Path | UrlPath:
    """A history file or folder as given: a URL with a scheme (``s3://``, ``memory://``...) is
    read through fsspec; ``file://`` and plain paths are local."""
    if isinstance(p, Path):
        return p
    if p.startswith("file://"):
        return Path(p[len("file://"):])
    return UrlPath(p) if "://" in p else Path(p)


def _fs(url: str):
    """(fsspec filesystem, path inside it) for ``url``, or a HistoryError saying what is missing."""
    try:
        import fsspec
    except ImportError:
        raise HistoryError(f"{url}: reading a URL needs fsspec (pip install fsspec)") from None
    try:
        return fsspec.core.url_to_fs(url)
    except (ImportError, ValueError) as e:  # an unknown scheme, or its package (s3fs, gcsfs) not installed
        raise HistoryError(f"{url}: cannot open ({type(e).__name__}: {e})") from None


def _url_files(url: UrlPath, every: bool) -> list[UrlPath]:
    """The histories under ``url`` (every one, or the newest per folder), or ``url`` itself when
    it names a file; a folder without any: ``url`` marked as a folder."""
    fs, root = _fs(url)
    root = root.rstrip("/")
    try:
        if fs.isfile(root):
            return [url]
        found = [f for f in fs.find(root) if HISTORY_NAME.match(f.rsplit("/", 1)[-1])]
        if not found and not fs.exists(root):
            raise HistoryError(f"{url}: no such file or directory")
    except HistoryError:
        raise
    except Exception as e:  # noqa: BLE001 - any backend's failure (credentials, network) is one named line
        raise HistoryError(f"{url}: cannot list ({type(e).__name__}: {e})") from None
    # The URL as given, plus each file's path below it (fsspec strips the scheme from its paths).
    files = [UrlPath(url + f[len(root):] if f.startswith(root + "/") else fs.unstrip_protocol(f)) for f in found]
    if not files:
        return [UrlPath(url, folder=True)]
    if every:
        return sorted(files)
    newest: dict[str, UrlPath] = {}
    for f in sorted(files):
        newest[f.parent] = f  # NNNN_ names sort by run number
    return sorted(newest.values())


def _read_text(p: Path | UrlPath) -> str:
    if isinstance(p, UrlPath):
        fs, path = _fs(p)
        try:
            data = fs.cat_file(path)
        except FileNotFoundError:
            raise HistoryError(f"{p}: no such file") from None
        except Exception as e:  # noqa: BLE001 - as in _url_files
            raise HistoryError(f"{p}: cannot read ({type(e).__name__}: {e})") from None
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError as e:
            raise HistoryError(f"{p}: cannot read ({type(e).__name__}: {e})") from None
    try:
        return p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise HistoryError(f"{p}: no such file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise HistoryError(f"{p}: cannot read ({type(e).__name__}: {e})") from None


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

    @property
    def validity_inferred(self) -> bool:
        """True when the record has no ``valid`` field and validity() recomputed its checks."""
        return not isinstance(self.info.get("valid"), bool)

    def validity(self) -> tuple[bool, list[str]]:
        """(valid, reasons): a record whose guardrail or parity check failed is a failed
        measurement, never a result. Recorded ``valid``/``invalid_reasons`` where present; for
        older records, recomputed from top1 vs top1_floor and parity_agreement vs parity_min
        (99.5 % where absent), each reason then saying it was inferred."""
        if not self.validity_inferred:
            reasons = [str(x) for x in (self.info.get("invalid_reasons") or [])]
            if not self.info["valid"] and not reasons:
                reasons = ["marked invalid, no reason recorded"]
            return bool(self.info["valid"]), reasons
        reasons = []
        top1, floor = self.n("top1"), self.n("top1_floor")
        if top1 is not None and floor is not None and top1 < floor:
            rule = self.get("top1_floor_rule")
            reasons.append(f"top-1 {top1:.2f}% < floor {floor:.2f}%" + (f" ({rule})" if rule else "")
                           + f" [{INFERRED}]")
        agree, pmin = self.n("parity_agreement"), self.n("parity_min")
        assumed = pmin is None
        pmin = DEFAULT_PARITY_MIN if assumed else pmin
        if agree is not None and agree < pmin:
            reasons.append(f"parity {agree:.2%} < minimum {pmin:.2%}"
                           + (" (parity_min not recorded: the default assumed)" if assumed else "")
                           + f" [{INFERRED}]")
        return not reasons, reasons

    @property
    def valid(self) -> bool:
        return self.validity()[0]

    def validity_text(self) -> str:
        """'ok', 'ok (inferred)' or 'INVALID: reason; reason' for tables."""
        ok, reasons = self.validity()
        if ok:
            return "ok (inferred)" if self.validity_inferred else "ok"
        return "INVALID: " + "; ".join(reasons)

    def parity_text(self) -> str:
        """Agreement with the reference against its minimum, e.g. '99.92% (min 95.0%)'."""
        agree = self.n("parity_agreement")
        if agree is None:
            return "—"
        pmin = self.n("parity_min")
        txt = f"{agree:.2%} (min {(DEFAULT_PARITY_MIN if pmin is None else pmin):.1%}"
        txt += "" if pmin is not None else ", assumed"
        check = str(self.get("parity_check") or "")
        return txt + (", round trip only)" if check.startswith("artifact round trip") else ")")

    def computed_in(self) -> str:
        """What really computed a record where a name could mislead: a precision the runtime chose
        over the hint (OpenVINO fp16 -> bf16), and for int8 variants (or any int8 share) how much
        ran in int8 (int8_label / int8_share; older records: int8_kernels). '' when nothing to say."""
        parts = []
        rt = self.get("runtime") if isinstance(self.get("runtime"), dict) else {}
        eff, hint = rt.get("inference_precision_effective"), rt.get("inference_precision_hint")
        if eff and hint and str(eff).lower() != str(hint).lower():
            parts.append(f"ran {eff} (hint {hint})")
        label, share = self.get("int8_label"), self.n("int8_share")
        # A float variant labelled float says nothing new; an int8 one must show how int8 it was.
        if "int8" in str(self["variant"]) or (share or 0) > 0:
            if label:
                parts.append(str(label) + (f" (int8 share {share:.2f})" if share is not None and "share" not in str(label)
                                           else ""))
            elif share is not None:
                parts.append(f"int8 share {share:.2f}")
            elif self.get("int8_kernels") is False:
                parts.append("float kernels: no int8 ran")
        return "; ".join(parts)


@dataclass
class Machine:
    key: str
    label: str
    facts: dict


@dataclass
class History:
    path: Path  # or a UrlPath, for a history read through fsspec
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


def cpu_isa(mi: dict) -> list[str] | None:
    """The KERNEL_FLAGS a machine has, from squeezebench's own facts (/proc/cpuinfo) and
    py-cpuinfo's flag list in pytest-benchmark's machine_info together: py-cpuinfo already merges
    cpuid with /proc/cpuinfo, so the union keeps a machine the same before and after records
    carried their own list. None when neither recorded flags."""
    own = (mi.get("squeezebench") or {}).get("cpu_isa")
    cpuinfo = (mi.get("cpu") or {}).get("flags")
    sources = [x for x in (own, cpuinfo) if isinstance(x, list)]
    if not sources or (own is None and not cpuinfo):  # an empty py-cpuinfo list: not recorded
        return None
    return kernel_flags(str(x) for src in sources for x in src)


def isa_tier(isa: list[str] | None) -> str:
    """A short name for the widest vector/matrix extension, for machine labels."""
    if isa is None:
        return ""
    s = set(isa)
    if "amx_tile" in s:
        return "AMX" + "".join(f"-{x[4:].upper()}" for x in ("amx_bf16", "amx_int8") if x in s)
    if "avx512f" in s:
        return "AVX-512" + "".join(f"+{x.split('_')[1].upper()}" for x in ("avx512_vnni", "avx512_bf16", "avx512_fp16")
                                   if x in s)
    if "avx2" in s:
        return "AVX2" + ("+VNNI" if "avx_vnni" in s else "")
    if "asimd" in s:
        return "NEON" + ("+dotprod" if "asimddp" in s else "") + ("+SVE" if "sve" in s else "")
    return "no AVX2"


def machine_of(mi: dict) -> Machine:
    """Which machine a history comes from, by what decides its speed: CPU vendor, family and
    model, the kernel-relevant ISA flags, available cores and GPUs (squeezebench's facts, else
    py-cpuinfo's in pytest-benchmark's machine_info). Not by node name: two hosts with the same
    facts are one machine (e.g. CI runners of one instance type), and one host name on two
    different CPUs is two. Histories that predate family/model fall back to the CPU brand string;
    without flags the ISA is unknown and only matches unknown."""
    sb = mi.get("squeezebench") or {}
    ci = mi.get("cpu") or {}
    brand = sb.get("cpu_model") or ci.get("brand_raw") or mi.get("processor") or mi.get("machine") or "?"
    vendor = sb.get("cpu_vendor") or ci.get("vendor_id_raw")
    family = sb.get("cpu_family") if sb.get("cpu_family") is not None else ci.get("family")
    model = sb.get("cpu_model_id") if sb.get("cpu_model_id") is not None else ci.get("model")
    isa = cpu_isa(mi)
    cores = sb.get("cpu_cores_available", ci.get("count"))
    gpus = [g for g in (sb.get("gpus") or []) if g and g != "none"]
    node = mi.get("node") or "?"
    cpu_id = (f"{vendor or '?'} family {family} model {model}" if family is not None and model is not None
              else f"brand {brand}")
    key = "|".join([str(mi.get("machine") or ci.get("arch") or "?"), cpu_id,
                    "isa " + (" ".join(isa) if isa is not None else "?"), f"{cores} cores", ",".join(gpus)])
    detail = ", ".join(x for x in (isa_tier(isa), f"{cores} cores" if cores else "") if x)
    label = f"{node} ({brand}" + (f", {detail}" if detail else "") + (f"; {', '.join(gpus)}" if gpus else "") + ")"
    facts = {
        "node": node, "cpu": brand,
        "CPU family/model": cpu_id if family is not None else "not recorded",
        "ISA": (" ".join(isa) or "none of " + " ".join(KERNEL_FLAGS[:3]) + "...") if isa is not None
               else "not recorded (no CPU flags in this history)",
        "gpus": ", ".join(gpus) or "none",
        "cores available": cores,
        "threads": sb.get("threads"), "memory GiB": sb.get("memory_gib"),
        "python": mi.get("python_version"), "system": f"{mi.get('system', '')} {mi.get('release', '')}".strip(),
        "profile": sb.get("profile"),
    }
    for lib, ver in (sb.get("libraries") or {}).items():
        facts[lib] = ver
    return Machine(key, label, facts)


def load_history(path: str | Path) -> History:
    """One pytest-benchmark JSON file with squeezebench records (a path or a URL), or a
    HistoryError naming it."""
    p = location(path)
    text = _read_text(p)
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
    """Files as given; a directory (local, or an fsspec URL) gives the newest ``NNNN_*.json`` of
    each machine folder in it (every one of them with ``every``). No paths: ``.benchmarks`` here.
    A URL that cannot be listed: HistoryError."""
    paths = list(paths) or [DEFAULT_ROOT]
    out: list[Path] = []
    for p in map(location, paths):
        if isinstance(p, UrlPath):
            out.extend(_url_files(p, every))  # type: ignore[arg-type]
        elif p.is_dir():
            found = (sorted(f for f in p.rglob("*.json") if HISTORY_NAME.match(f.name)) if every
                     else _newest_per_machine(p))
            out.extend(found or [p])  # an empty dir is reported by load_histories
        else:
            out.append(p)
    return out


def load_histories(paths: Iterable[str | Path], *, every: bool = False,
                   err: TextIO | None = None) -> list[History]:
    """Every readable history among ``paths`` (files, folders, fsspec URLs); each unreadable
    one, and each root that cannot be listed, is named on ``err``."""
    err = err or sys.stderr
    paths = list(paths)
    if not paths and not DEFAULT_ROOT.is_dir():
        print(f"reports: no {DEFAULT_ROOT}/ here; name history files or directories "
              "(run the benchmarks with --benchmark-autosave to make one)", file=err)
        return []
    out = []
    for given in paths or [DEFAULT_ROOT]:
        try:
            found = expand_paths([given], every=every)
        except HistoryError as e:
            print(f"reports: skipped {e}", file=err)
            continue
        for p in found:
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
