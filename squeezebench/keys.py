"""What a cache key is made of, besides the inputs: the code that built an entry and the
versions of the libraries that produced it. At the bottom of the import graph.

Each cached entry names its *producers*, the distributions whose code computed its bytes
(torch trains and exports, onnxruntime quantizes, openvino converts, ...), and only those: an
upgrade of a library rebuilds exactly the entries it made, and an upgrade of an unrelated one
rebuilds nothing.
"""
from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import inspect
from pathlib import Path
from typing import Any, Callable, TypeVar

F = TypeVar("F", bound=Callable[..., Any])


def source_hash(*objs: Any) -> str:
    """Hash of the source files of modules, classes or functions (or paths): part of cache keys,
    so a code change rebuilds what that code made."""
    h = hashlib.sha256()
    for o in objs:
        path = o if isinstance(o, Path) else Path(inspect.getsourcefile(o) or "")
        h.update(path.read_bytes())
    return h.hexdigest()[:12]


@functools.lru_cache(maxsize=None)
def library_version(dist: str) -> str:
    """The installed version of distribution ``dist`` ("not installed" when absent)."""
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def producer_versions(producers: tuple[str, ...] | list[str]) -> dict[str, str]:
    """{distribution: version} for an entry's producers, sorted, for its cache key."""
    return {p: library_version(p) for p in sorted(set(producers))}


def produced_by(*producers: str) -> Callable[[F], F]:
    """Mark an artifact writer with the distributions that compute its output, e.g.
    ``@produced_by("torch", "onnx", "onnxruntime")`` on a writer that exports with torch and
    quantizes with ONNX Runtime; the artifact's cache key then holds their versions."""

    def deco(fn: F) -> F:
        fn.producers = tuple(producers)  # type: ignore[attr-defined]
        return fn

    return deco


def producers_of(fn: Any, default: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(getattr(fn, "producers", default))
