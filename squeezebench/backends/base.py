"""The backend interface: export a variant to a runtime's format, load it, run a batch, return logits.

A backend knows one runtime only. Which artifact format it loads is a class attribute; the
:class:`Exporter` registered for that format writes it from the variant's runtime-free
:class:`~squeezebench.domain.ExportSpec`, and :meth:`Backend.support_reason` says which variants
the runtime cannot run. Adding a backend with a new format is one module: a ``Backend`` and an
``Exporter``, each registered.
"""
from __future__ import annotations

import warnings
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, Callable, ClassVar

import numpy as np
import torch

from squeezebench.domain import Artifact, Variant

# Writes a variant's artifact into a directory (a cache entry being built) and returns the main
# file's name; marked with ``squeezebench.keys.produced_by`` (the libraries that compute its bytes).
Writer = Callable[[Variant, Path], str]


class BackendUnavailable(Exception):
    """The runtime is not installed or has no device here; the message is the skip reason."""


class Session(ABC):
    """A loaded artifact, ready to run batches."""

    device_name: str = "unknown"
    threads: int | None = None
    # What the artifact asked for (its meta "quantization", e.g. "int8-static"); the session's
    # facts say whether int8 kernels really run for it (see ``int8_facts``).
    requested_quantization: str | None = None

    @abstractmethod
    def prepare(self, x: torch.Tensor) -> Any:
        """Turn a float32 NCHW batch into this runtime's input (done outside any timer)."""

    @abstractmethod
    def run(self, prepared: Any) -> Any:
        """Run one batch; returns when the result is ready (device synchronised)."""

    @abstractmethod
    def to_numpy(self, out: Any) -> np.ndarray:
        """Logits as a float numpy array (done outside any timer)."""

    def predict(self, x: torch.Tensor, batch_size: int = 256) -> np.ndarray:
        """Logits for all of ``x``, in batches."""
        outs = [self.to_numpy(self.run(self.prepare(x[i:i + batch_size])))
                for i in range(0, len(x), batch_size)]
        return np.concatenate(outs).astype(np.float64, copy=False)

    def facts(self) -> dict:
        """Runtime facts worth recording (kernels, precisions...)."""
        return {}


# A variant is labelled "int8" when at least this share of its MACs runs int8; ``int8_kernels``
# needs a majority (> INT8_MAJORITY), so one int8 layer beside big float ones is not "int8".
INT8_MAJORITY = 0.5
INT8_LABEL_MIN = 0.9

# Element type names of every runtime, normalised to one precision vocabulary.
_PRECISION = {
    "u8": "int8", "i8": "int8", "uint8": "int8", "int8": "int8", "quint8": "int8", "qint8": "int8",
    "f32": "f32", "float32": "f32", "float": "f32", "f16": "f16", "float16": "f16", "half": "f16",
    "bf16": "bf16", "bfloat16": "bf16", "f64": "f64", "float64": "f64", "double": "f64",
}
# Precision tokens in kernel names (OpenVINO's primitiveType: brgconv_avx512_I8, brgemm_avx512_bf16, ...).
_KERNEL_TOKENS = {"i8": "int8", "u8": "int8", "int8": "int8", "bf16": "bf16", "f16": "f16", "fp16": "f16",
                  "f32": "f32", "fp32": "f32"}


def precision_of(type_name: str | None) -> str | None:
    """A runtime's element type name (``u8``, ``tensor(float)``, ``torch.quint8``...) as int8/f16/bf16/f32/f64."""
    if not type_name:
        return None
    t = str(type_name).lower().removeprefix("torch.").removeprefix("tensor(").removesuffix(")")
    return _PRECISION.get(t, t)


def kernel_precision(kernel: str | None) -> str | None:
    """The precision a kernel name states (e.g. ``..._I8`` -> int8, ``..._bf16`` -> bf16), None when it names none."""
    if not kernel:
        return None
    found = {_KERNEL_TOKENS[tok] for tok in str(kernel).lower().split("_") if tok in _KERNEL_TOKENS}
    return found.pop() if len(found) == 1 else None


def matmul_reduction(a_shape: list[int], out_shape: list[int]) -> int:
    """K of ``A @ B`` from A's and the output's shapes (A may be transposed: then its -2 axis is K)."""
    if len(a_shape) == 1:
        return a_shape[0]
    return a_shape[-1] if len(out_shape) >= 2 and a_shape[-2] == out_shape[-2] else a_shape[-2]


def int8_label(share: float | None) -> str:
    """``int8``, ``mostly int8 (...)``, ``mostly float (int8 share 0.23)`` or ``float``."""
    if share is None:
        return "unknown (no compute ops found)"
    if share <= 0:
        return "float"
    if share >= INT8_LABEL_MIN:
        return "int8"
    return f"mostly {'int8' if share > INT8_MAJORITY else 'float'} (int8 share {share:.2f})"


def int8_share(ops: list[dict]) -> dict:
    """How much of the model runs int8, from its compute ops (``precision`` and per-image ``macs``).

    The basis is MACs when every op's MACs are known, else the count of compute ops (said in
    ``int8_share_basis``). ``int8_kernels`` is true only for a majority; ``int8_any_op`` keeps the
    old meaning (at least one compute op runs int8)."""
    macs = [op.get("macs") for op in ops]
    by_macs = bool(ops) and all(isinstance(m, (int, float)) for m in macs) and sum(macs) > 0
    weights = [float(m) for m in macs] if by_macs else [1.0] * len(ops)
    total = sum(weights)
    per_precision: dict[str, float] = {}
    for op, w in zip(ops, weights):
        per_precision[op["precision"]] = per_precision.get(op["precision"], 0.0) + w
    share = round(per_precision.get("int8", 0.0) / total, 4) if total else None
    out = {
        "int8_kernels": share is not None and share > INT8_MAJORITY,
        "int8_share": share,
        "int8_share_basis": "macs" if by_macs else "compute ops",
        "int8_label": int8_label(share),
        "int8_any_op": any(op["precision"] == "int8" for op in ops),
        "precision_share": {p: round(w / total, 4) for p, w in sorted(per_precision.items())} if total else {},
    }
    if by_macs:
        out["compute_macs_per_image"] = int(total)
    return out


def int8_facts(backend: str, requested: str | None, ops: list[dict], evidence: dict) -> dict:
    """The int8 share of ``ops`` (see ``int8_share``) plus the runtime's evidence; when int8 was
    requested but most of the model runs float, an ``int8_note`` saying so (and a warning)."""
    out = {**int8_share(ops), **evidence, "compute_ops": ops}
    if requested:
        out["int8_requested"] = requested
        if not out["int8_kernels"]:
            if not out["int8_any_op"]:
                what = "runs float kernels for it"
            else:
                what = (f"runs most of it in float kernels (int8 share {out['int8_share']:.2f} of its "
                        f"{out['int8_share_basis']}: {out['int8_label']})")
            out["int8_note"] = f"{requested} was requested but {backend} {what} (see the evidence beside this note)"
            warnings.warn(out["int8_note"], RuntimeWarning, stacklevel=2)
    return out


def facts_problems(facts: dict) -> list[str]:
    """Where a session's facts contradict themselves; empty when the record is self-consistent.

    Checks what a record says against what it lists, never which kernels a CPU should pick: the
    int8 share, label and flags against the listed compute ops; each op's precision against its
    activation/weight types and its kernel's name; OpenVINO's effective precision against the
    precisions its compute layers ran in."""
    problems: list[str] = []
    ops = facts.get("compute_ops")
    if ops is not None:
        expect = int8_share(ops)
        for key, want in expect.items():
            got = facts.get(key)
            same = (abs(got - want) <= 1e-3 if isinstance(want, float) and isinstance(got, (int, float))
                    else got == want)
            if not same:
                problems.append(f"{key} is {got!r} but its compute ops give {want!r}")
        for op in ops:
            name, prec = op.get("name", op.get("op")), op["precision"]
            act, weight = precision_of(op.get("activation")), precision_of(op.get("weight"))
            if prec == "int8":
                if act is not None and act != "int8" and not op.get("dynamic"):
                    problems.append(f"{name}: int8 but its activation input is {op.get('activation')}")
                if weight is not None and weight != "int8":
                    problems.append(f"{name}: int8 but its weight is {op.get('weight')}")
            elif act is not None and act != prec:
                problems.append(f"{name}: {prec} but its activation input is {op.get('activation')}")
            kernel = kernel_precision(op.get("kernel"))
            if kernel is not None and kernel != prec:
                problems.append(f"{name}: {prec} but its kernel {op.get('kernel')} is {kernel}")
    # OpenVINO's summary: layer:activation type:kernel per compute layer.
    layers = facts.get("compute_layers") or {}
    for key in layers:
        _, act, kernel = (key.split(":") + ["", ""])[:3]
        if kernel_precision(kernel) not in (None, precision_of(act)):
            problems.append(f"compute layer {key}: its activation type and its kernel disagree")
    effective = precision_of(facts.get("inference_precision_effective"))
    if effective is not None:
        ran = ([op["precision"] for op in ops] if ops is not None
               else [precision_of(k.split(":")[1]) for k in layers if ":" in k])
        floats = {p for p in ran if p != "int8"}
        # A plugin may keep single layers in f32 under a lower hint; but a lower precision that no
        # layer ran in, or one it did not settle on, is a contradiction.
        if floats - {effective, "f32"}:
            problems.append(f"inference_precision_effective is {effective} but compute layers ran in "
                            f"{sorted(floats - {effective})}")
        if effective != "f32" and floats and effective not in floats:
            problems.append(f"inference_precision_effective is {effective} but no compute layer ran in it "
                            f"(they ran in {sorted(floats)})")
    return problems


class Backend(ABC):
    name: ClassVar[str]
    artifact_format: ClassVar[str]

    def __init__(self, threads: int):
        self.threads = threads

    @classmethod
    def unavailable_reason(cls) -> str | None:
        """None when usable here, else why not (used as the skip reason)."""
        return None

    @classmethod
    def support_reason(cls, v: Variant) -> str | None:
        """None when this runtime can run ``v`` (its export spec), else why not (the skip reason).
        Static knowledge: answered without importing the runtime."""
        return None

    @abstractmethod
    def load(self, artifact: Artifact) -> Session:
        ...


class Exporter(ABC):
    """Writes one artifact format from a variant: its torch model, arch and export spec."""

    format: ClassVar[str]

    @abstractmethod
    def writer(self, v: Variant) -> Writer:
        """The function that writes ``v``'s artifact (marked with the libraries that compute it)."""

    def code(self) -> tuple[Any, ...]:
        """Modules whose source decides the bytes: their hash is part of the artifact's cache key."""
        return (type(self),)

    def files(self, entry: Path, main: str) -> tuple[Path, ...]:
        """Every file a backend loads for ``main`` (for honest byte counts)."""
        return (entry / main,)

    def tool(self, v: Variant) -> str | None:
        """How this format's artifact of an int8 variant is made (recorded in the variant's
        ``facts["quantization"]["tools"]``), None when there is nothing to say."""
        return None


_BACKENDS: dict[str, type[Backend]] = {}
_EXPORTERS: dict[str, Exporter] = {}
# Exporters that write a format from an exported model file (``ExportSpec.source_file``) instead
# of a torch module; a format without one cannot run such a variant.
_FILE_EXPORTERS: dict[str, Exporter] = {}


def register_backend(cls: type[Backend]) -> type[Backend]:
    _BACKENDS[cls.name] = cls
    return cls


def register_exporter(cls: type[Exporter]) -> type[Exporter]:
    """Register ``cls()`` as the writer of artifact format ``cls.format``."""
    _EXPORTERS[cls.format] = cls()
    return cls


def register_file_exporter(cls: type[Exporter]) -> type[Exporter]:
    """Register ``cls()`` as the writer of format ``cls.format`` for the variants of an exported
    model file (``ExportSpec.source_file``: ``--sb-models onnx:<path>``)."""
    _FILE_EXPORTERS[cls.format] = cls()
    return cls


def list_backends() -> list[str]:
    return list(_BACKENDS)


def get_backend(name: str) -> type[Backend]:
    try:
        return _BACKENDS[name]
    except KeyError:
        raise KeyError(f"unknown backend {name!r}; known: {', '.join(_BACKENDS)}") from None


def get_exporter(fmt: str) -> Exporter:
    try:
        return _EXPORTERS[fmt]
    except KeyError:
        raise KeyError(f"no exporter for artifact format {fmt!r}; known: {', '.join(_EXPORTERS)}") from None


def exporter_for(v: Variant, fmt: str) -> Exporter:
    """The exporter that writes ``v``'s artifact in format ``fmt``: the format's exporter, or for a
    variant of an exported file (``v.export.source_file``) the one registered for files."""
    if v.export.source_file is None:
        return get_exporter(fmt)
    try:
        return _FILE_EXPORTERS[fmt]
    except KeyError:
        raise KeyError(f"no exporter writes {fmt!r} from an exported file; formats written from a file: "
                       f"{', '.join(_FILE_EXPORTERS)}") from None


def _file_reason(v: Variant, backend: str, fmt: str) -> str | None:
    """Why ``backend`` cannot run a variant of an exported file: its format is written from a
    torch module only."""
    if v.export.source_file is None or fmt in _FILE_EXPORTERS:
        return None
    runtimes = [name for name, cls in _BACKENDS.items() if cls.artifact_format in _FILE_EXPORTERS]
    return (f"{v.model_name} is an exported file: no torch module to run on {backend}; runtime-side backends "
            f"only ({', '.join(runtimes)})")


def support(v: Variant) -> tuple[tuple[str, ...], dict[str, str]]:
    """What the registered backends say about ``v``: the formats at least one of them can run it
    from (in registration order), and {backend: why it cannot} for the others. A variant of an
    exported file runs only where an exporter writes the backend's format from a file."""
    unsupported = {name: r for name, cls in _BACKENDS.items()
                   if (r := _file_reason(v, name, cls.artifact_format) or cls.support_reason(v))}
    formats = tuple(fmt for fmt in _EXPORTERS
                    if any(cls.artifact_format == fmt and name not in unsupported for name, cls in _BACKENDS.items()))
    return formats, unsupported
