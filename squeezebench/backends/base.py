"""The backend interface: load an artifact, run a batch, return logits.

A backend knows one runtime only. Which artifact format it loads is a class attribute;
exporting to that format is the job of :mod:`squeezebench.artifacts`.
"""
from __future__ import annotations

import warnings
from abc import ABC, abstractmethod
from typing import Any, ClassVar

import numpy as np
import torch

from squeezebench.domain import Artifact


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


def int8_facts(backend: str, requested: str | None, int8: bool, evidence: dict) -> dict:
    """``int8_kernels`` plus the runtime's evidence; when int8 was requested but the runtime runs
    float kernels, an ``int8_note`` saying so (and a warning), never silence."""
    out = {"int8_kernels": bool(int8), **evidence}
    if requested:
        out["int8_requested"] = requested
        if not int8:
            out["int8_note"] = (f"{requested} was requested but {backend} runs float kernels for it "
                                "(see the evidence beside this note)")
            warnings.warn(out["int8_note"], RuntimeWarning, stacklevel=2)
    return out


class Backend(ABC):
    name: ClassVar[str]
    artifact_format: ClassVar[str]

    def __init__(self, threads: int):
        self.threads = threads

    @classmethod
    def unavailable_reason(cls) -> str | None:
        """None when usable here, else why not (used as the skip reason)."""
        return None

    @abstractmethod
    def load(self, artifact: Artifact) -> Session:
        ...


_BACKENDS: dict[str, type[Backend]] = {}


def register_backend(cls: type[Backend]) -> type[Backend]:
    _BACKENDS[cls.name] = cls
    return cls


def list_backends() -> list[str]:
    return list(_BACKENDS)


def get_backend(name: str) -> type[Backend]:
    try:
        return _BACKENDS[name]
    except KeyError:
        raise KeyError(f"unknown backend {name!r}; known: {', '.join(_BACKENDS)}") from None
