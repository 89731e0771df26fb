"""The study's Tables 1-20 regenerated from one history: every cell measured by us, with the
study's own figure beside it for reference (from ``reports/data``, source named there).

Which of our records answers a study row is derived from the row's own columns (technique,
setting, precision; see :func:`our_key`), so new study rows need no code.
"""
from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from pathlib import Path

from squeezebench.reports.analysis import bits_per_weight
from squeezebench.reports.history import History, Record, num
from squeezebench.reports.tables import MISSING, Table, fmt, fmt_kb, fmt_sci

DATA = Path(__file__).resolve().parent / "data"
SOURCE = ("the study's figures: reports/data/study_tables.csv and study_params.csv, copied from "
          "shared/reference (the study's paper, Tables 1-20); reference only, not our measurements")

# How a study row's columns become one of our variant ids. The project's ``paper`` profile
# (squeezebench.paper) names the ids it runs; these follow it, with fallbacks if it is absent.
try:
    from squeezebench import paper as _project
except ImportError:  # pragma: no cover - the reports read histories without the engine too
    _project = None
QUANT_TOKEN = getattr(_project, "INT8", "int8-static")  # the study's int8 rows
# Other int8 schemes that answer an int8 row when the history lacks QUANT_TOKEN (named in the cell).
QUANT_ALTERNATES = tuple(t for t in ("int8-static", "int8-qat", "int8-dynamic") if t != QUANT_TOKEN)
KD_TOKEN = getattr(_project, "KD", "kd-t4")  # the student distilled from the row's teacher
SCRATCH_VARIANT = getattr(_project, "SCRATCH", "scratch-mlp_student")
SETTING_TOKENS = {
    "original": None, "teacher": None,
    "dense": "sprune50-dense",  # structured pruning of the dense layers only
    "dense+conv": "sprune75-conv",  # structured pruning of dense and conv layers
    "pruned": "sprune75-conv",  # Tables 6/10: LeNet-5 after Table 5/9's dense+conv pruning
}
PRECISION_TOKENS = {"fp32": None, "": None, "fp64": "fp64", "fp16": "fp16", "bf16": "bf16", "int8": QUANT_TOKEN}
STUDENT = "mlp_student"

# Tables 19/20 name a technique; the study's best row of that technique is found by value.
BEST_FAMILIES = {
    "original": lambda r: r["setting"] in ("original", "teacher") and r["precision"] == "fp32",
    "quantization": lambda r: r["setting"] in ("original", "teacher") and r["precision"] == "int8",
    "pruning": lambda r: r["technique"] in ("weight_pruning", "layer_pruning"),
    "distillation": lambda r: r["technique"] == "distillation" and r["setting"].startswith("from_"),
    "prune+quantize": lambda r: r["technique"] == "prune+quantize" and r["precision"] == "int8",
    "distill+quantize": lambda r: r["technique"] == "distill+quantize" and r["precision"] == "int8",
}


def _read_csv(name: str) -> list[dict]:
    with open(DATA / name, newline="", encoding="utf-8") as f:
        return [dict(r) for r in csv.DictReader(f)]


def study_rows() -> list[dict]:
    rows = _read_csv("study_tables.csv")
    for r in rows:
        # Two rows of the reference CSV leave out the empty epochs field, so csv puts their note
        # under "epochs"; a note is text, epochs a number.
        if r.get("note") is None and r.get("epochs") and not r["epochs"].strip().isdigit():
            r["note"], r["epochs"] = r["epochs"], ""
    return rows


def study_params() -> list[dict]:
    return _read_csv("study_params.csv")


def captions() -> dict[int, str]:
    return {int(r["table"]): r["caption"] for r in _read_csv("study_captions.csv")}


def our_key(row: dict) -> tuple[str, str, str]:
    """(model, dataset, variant id) of ours that answers a study row; model "*" = any model
    (the scratch student does not depend on a teacher)."""
    model, dataset, setting = row["model"], row["dataset"], row["setting"]
    tokens: list[str] = []
    if model == STUDENT:
        if setting == "scratch":
            return "*", dataset, SCRATCH_VARIANT
        if not setting.startswith("from_"):
            raise ValueError(f"student row with setting {setting!r}")
        model = setting[len("from_"):]
        tokens.append(KD_TOKEN)
    elif (m := re.fullmatch(r"sparsity(\d+)", setting)):
        tokens.append(f"prune{m[1]}")
    elif setting in SETTING_TOKENS:
        if SETTING_TOKENS[setting]:
            tokens.append(SETTING_TOKENS[setting])
    else:
        raise ValueError(f"no variant for setting {setting!r}")
    prec = row.get("precision", "")
    if prec not in PRECISION_TOKENS:
        raise ValueError(f"no variant for precision {prec!r}")
    if PRECISION_TOKENS[prec]:
        tokens.append(PRECISION_TOKENS[prec])
    return model, dataset, "+".join(tokens) or "fp32"


def _same(a: str, b: str) -> bool:
    x, y = num(_float(a)), num(_float(b))
    return x is not None and y is not None and abs(x - y) <= 1e-9 * max(abs(x), abs(y), 1e-30)


def _float(s: str) -> float | None:
    try:
        return float(s)
    except (TypeError, ValueError):
        return None


def resolve_best(best: dict, rows: list[dict]) -> tuple[dict | None, str]:
    """The study row (Tables 1-18) a Table 19/20 cell refers to: same dataset and model (or its
    distilled student), same technique family, same value; else the smallest / fastest."""
    table = int(best["table"])
    value_col = "size_kb" if table == 19 else "sec_per_image_config1"
    family = BEST_FAMILIES.get(best["setting"])
    if family is None:
        return None, f"unknown technique {best['setting']!r}"
    model, dataset = best["model"], best["dataset"]
    cands = [r for r in rows if int(r["table"]) <= 18 and r["dataset"] == dataset and family(r)
             and (r["model"] == model or (r["model"] == STUDENT and r["setting"] == f"from_{model}"))
             and _float(r[value_col]) is not None]
    if not cands:
        return None, "no study row of this technique"
    same = [r for r in cands if _same(r[value_col], best[value_col])]
    if same:
        return same[0], f"the study's Table {same[0]['table']} row with this value"
    pick = min(cands, key=lambda r: _float(r[value_col]))
    what = "smallest" if table == 19 else "fastest"
    return pick, f"no study row has this value; the {what} of the technique (Table {pick['table']})"


@dataclass
class Ours:
    """Our records for a study row, from one history."""

    key: tuple[str, str, str]
    timed: Record | None  # backend & batch asked for
    any: Record | None  # any backend/batch (top-1 and sizes when the timed one is missing)

    @property
    def record(self) -> Record | None:
        return self.timed or self.any


class Lookup:
    def __init__(self, history: History, backend: str, batch: int):
        self.records, self.backend, self.batch = history.records, backend, batch
        self.invalid: dict[str, list[str]] = {}  # label -> reasons, of the invalid records found

    def invalid_notes(self) -> list[str]:
        """Table notes for the invalid records found since the last call."""
        notes = [f"INVALID {label}: {'; '.join(reasons)} (a failed measurement, shown marked, not a result)"
                 for label, reasons in self.invalid.items()]
        self.invalid = {}
        return notes

    def _find(self, model: str, dataset: str, variant: str) -> Ours:
        match = [r for r in self.records if r["dataset"] == dataset and r["variant"] == variant
                 and (model == "*" or r["model"] == model)]
        timed = next((r for r in match if r["backend"] == self.backend and r["batch"] == self.batch), None)
        pref = sorted(match, key=lambda r: (r["backend"] != self.backend, r["batch"] != self.batch))
        return Ours((model, dataset, variant), timed, pref[0] if pref else None)

    def find(self, model: str, dataset: str, variant: str) -> Ours:
        """Our records for (model, dataset, variant); for an int8 variant the history lacks, the
        same chain with another int8 scheme (the variant label then names the one used)."""
        found = self._find(model, dataset, variant)
        if found.record is None and QUANT_TOKEN in variant.split("+"):
            for alt in QUANT_ALTERNATES:
                other = self._find(model, dataset, "+".join(alt if t == QUANT_TOKEN else t for t in variant.split("+")))
                if other.record is not None:
                    found = other
                    break
        for r in (found.timed, found.record):
            if r is not None and not r.valid:
                self.invalid[r.label] = r.validity()[1]
        return found


def _variant_label(o: Ours) -> str:
    m, _, v = o.key
    if m == "*" and o.record is not None:
        m = o.record["model"]
    return f"{v} ({m})" if m != "*" else v


def _our_cells(o: Ours, backend: str, batch: int) -> list[str]:
    r = o.record
    if r is None:
        return [MISSING] * 4
    size, field = r.size()
    nz = r.n("nonzero_params")
    params_kb = fmt_kb(nz * bits_per_weight(r) / 8) if nz is not None else "—"
    art = f"{fmt_kb(size)} ({'compressed' if field == 'compressed_bytes' else r['artifact_format'] or 'artifact'})"
    t = fmt_sci(o.timed.per_image_s) if o.timed is not None and o.timed.per_image_s is not None else \
        f"no {backend} b{batch} record"
    if o.timed is not None and not o.timed.valid:
        t = f"INVALID: {t}"
    # A failed measurement keeps its number, marked: the table note gives the reason.
    return [("" if r.valid else "INVALID: ") + fmt(r.n("top1")), art, params_kb, t]


def project_rows(n: int) -> list[tuple[str, str, str]]:
    """(model, dataset, variant) rows the project's ``paper`` profile runs for Table n."""
    tables = getattr(_project, "PAPER_TABLES", {}) or {}
    t = tables.get(n)
    return list(t.rows()) if t is not None else []


def _extra_rows(n: int, shown: set[tuple[str, str, str]]) -> list[tuple[str, str, str]]:
    def seen(k):
        m, d, v = k
        return k in shown or ("*", d, v) in shown

    return [k for k in project_rows(n) if not seen(k)]


ONLY_OURS = "(ours only: no study row)"


def results_table(n: int, rows: list[dict], look: Lookup, caption: str) -> Table:
    cols = ["dataset", "model", "setting", "precision", "our variant",
            "top-1 % ours", "top-1 % study",
            "size kB ours (file)", "param kB ours", "size kB study",
            f"s/image ours ({look.backend} b{look.batch})", "s/image study Config1", "s/image study Config2", "study note"]
    out, shown = [], set()
    for r in rows:
        try:
            k = our_key(r)
            shown.add(k)
            o = look.find(*k)
            label = _variant_label(o)
            ours = _our_cells(o, look.backend, look.batch)
        except ValueError as e:
            label, ours = f"no mapping: {e}", [MISSING] * 4
        out.append([r["dataset"], r["model"], r["setting"], r["precision"] or "—", label,
                    ours[0], r["top1_pct"] or "—", ours[1], ours[2], r["size_kb"] or "—",
                    ours[3], r["sec_per_image_config1"] or "—", r["sec_per_image_config2"] or "—", r["note"]])
    for m, d, v in _extra_rows(n, shown):
        o = look.find(m, d, v)
        ours = _our_cells(o, look.backend, look.batch)
        out.append([d, m, ONLY_OURS, "—", _variant_label(o), ours[0], "—", ours[1], ours[2], "—", ours[3], "—", "—", ""])
    return Table(f"Table {n}. {caption}", cols, out, notes=look.invalid_notes(), anchor=f"table-{n}")


def best_table(n: int, rows: list[dict], all_rows: list[dict], look: Lookup, caption: str) -> Table:
    what = "size kB" if n == 19 else "s/image Config1"
    cols = ["technique", "dataset", "model", "study's row", "our variant", f"{what} study",
            "size kB ours (file)" if n == 19 else f"s/image ours ({look.backend} b{look.batch})",
            "param kB ours" if n == 19 else "top-1 % ours", "how the row was found"]
    out = []
    for b in rows:
        src, how = resolve_best(b, all_rows)
        if src is None:
            out.append([b["setting"], b["dataset"], b["model"], "—", MISSING, b["size_kb"] if n == 19
                        else b["sec_per_image_config1"], MISSING, MISSING, how])
            continue
        o = look.find(*our_key(src))
        cells = _our_cells(o, look.backend, look.batch)
        study_row = f"T{src['table']} {src['model']} {src['setting']} {src['precision']}"
        val = b["size_kb"] if n == 19 else b["sec_per_image_config1"]
        ours = [cells[1], cells[2]] if n == 19 else [cells[3], cells[0]]
        out.append([b["setting"], b["dataset"], b["model"], study_row, _variant_label(o), val or "—", *ours,
                    how + (f"; study note: {b['note']}" if b["note"] else "")])
    return Table(f"Table {n}. {caption}", cols, out, notes=look.invalid_notes(), anchor=f"table-{n}")


def _layer_counts(rec: Record, with_bias: bool) -> dict[str, int] | None:
    layers = rec.get("nonzero_per_layer") or (rec.get("prune") or {}).get("nonzero_per_layer")
    if not isinstance(layers, dict) or not layers:
        return None
    convs = [k for k, v in layers.items() if len(v.get("shape", [])) == 4]
    fcs = [k for k, v in layers.items() if len(v.get("shape", [])) == 2]
    out = {}
    for k, v in layers.items():
        out[k] = int(v.get("weight_nonzero", 0)) + (int(v.get("bias", 0)) if with_bias else 0)
    for i, k in enumerate(convs, 1):
        out.setdefault(f"conv{i}", out[k])
    for i, k in enumerate(fcs, 1):
        out.setdefault(f"fc{i}", out[k])
    return out


def params_table(n: int, rows: list[dict], look: Lookup, caption: str) -> Table:
    layer_cols = [c for c in ("conv1", "conv2", "fc1", "fc2", "fc3") if any(r[c] for r in rows)]
    with_bias = not any("no biases" in r["note"] for r in rows)
    cols = ["setting", "our variant"] + [f"{c} ours / study" for c in layer_cols] + ["total ours / study", "study note"]
    out, shown = [], set()
    model, dataset = rows[0]["model"], rows[0]["dataset"]
    items = [(r, our_key({**r, "precision": "fp32"})) for r in rows]
    shown = {k for _, k in items}
    empty = {c: "" for c in layer_cols + ["total", "note", "setting"]}
    items += [({**empty, "setting": ONLY_OURS}, k) for k in _extra_rows(n, shown) if k[:2] == (model, dataset)]
    for r, k in items:
        o = look.find(*k)
        rec = o.record
        counts = _layer_counts(rec, with_bias) if rec is not None else None
        cells = []
        for c in layer_cols + ["total"]:
            study = r[c] if c != "total" else r["total"]
            if rec is None:
                ours = MISSING
            elif counts is None:
                ours = "no per-layer counts"
            elif c == "total":
                ours = str(sum(counts[k] for k in layer_cols if k in counts))
            else:
                ours = str(counts[c]) if c in counts else "—"
            invalid = rec is not None and not rec.valid and c == "total"
            cells.append(f"{'INVALID: ' if invalid else ''}{ours} / {study or '—'}")
        out.append([r["setting"], _variant_label(o), *cells, r["note"]])
    notes = [f"counts: nonzero weights{' + biases' if with_bias else ' (no biases)'} per layer, as the study counts them here"]
    notes += look.invalid_notes()  # counts are static facts; an invalid record's are still shown
    return Table(f"Table {n}. {caption}", cols, out, notes=notes, anchor=f"table-{n}")


def paper_tables(history: History, *, backend: str = "torch-cpu", batch: int = 1,
                 tables: list[int] | None = None) -> list[Table]:
    rows, params, caps = study_rows(), study_params(), captions()
    look = Lookup(history, backend, batch)
    numbers = sorted({int(r["table"]) for r in rows} | {int(r["table"]) for r in params})
    out = []
    for n in numbers:
        if tables and n not in tables:
            continue
        cap = caps.get(n, "")
        trows = [r for r in rows if int(r["table"]) == n]
        prows = [r for r in params if int(r["table"]) == n]
        if prows:
            out.append(params_table(n, prows, look, cap))
        elif n in (19, 20):
            out.append(best_table(n, trows, rows, look, cap))
        else:
            out.append(results_table(n, trows, look, cap))
    return out


def matched_count(history: History, backend: str = "torch-cpu", batch: int = 1) -> tuple[int, int]:
    """(study rows of Tables 1-18 this history answers, all such rows)."""
    look = Lookup(history, backend, batch)
    rows = [r for r in study_rows() if int(r["table"]) <= 18]
    hit = 0
    for r in rows:
        try:
            hit += look.find(*our_key(r)).record is not None
        except ValueError:
            pass
    return hit, len(rows)


def preamble(history: History, backend: str, batch: int) -> list[str]:
    m = history.machine
    hit, total = matched_count(history, backend, batch)
    return [
        f"Ours: measured in {history.path} (machine {m.label}, commit {history.commit}, {history.datetime}); "
        f"{hit} of {total} study rows of Tables 1-18 have a record in this history.",
        f"Study: {SOURCE}.",
        "Sizes: the study's are kB of (nonzero) parameters; ours show the artifact file in kB "
        "(1 kB = 1000 B; compressed_bytes where recorded, else the backend's artifact_bytes, format named) "
        "and 'param kB' = our nonzero parameters x bits per weight / 8.",
        f"Times: the study's are seconds per image in TensorFlow on its Config1/Config2 laptops; ours are "
        f"the median per-image time of the {backend} batch-{batch} record as s/image.",
        f"Rows: study int8 rows map to {QUANT_TOKEN} (else {' or '.join(QUANT_ALTERNATES)}, named in the cell; "
        f"the study itself used quantization-aware training), distilled students to {KD_TOKEN} of the row's "
        f"teacher, sparsityN to pruneN, dense / dense+conv to {SETTING_TOKENS['dense']} / "
        f"{SETTING_TOKENS['dense+conv']}. Rows marked '{ONLY_OURS}' are the project's paper profile's "
        f"extra variants (squeezebench.paper.PAPER_TABLES).",
        f"Validity: a record whose top-1 guardrail or parity check failed is a failed measurement: its cells "
        f"are marked INVALID and the table's notes give the reason "
        f"({sum(not r.valid for r in history.records)} of {len(history.records)} records in this history).",
    ]
