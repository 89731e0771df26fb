"""Where data and caches live, resolved once from options, then environment, then defaults.

Nothing here reads the environment on import; :func:`resolve_settings` is called by the
pytest plugin (and the CLIs) with the option values they parsed.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

ENV_DATA_DIR = "SQUEEZEBENCH_DATA_DIR"
ENV_CACHE_DIR = "SQUEEZEBENCH_CACHE_DIR"
ENV_SHARED_CACHE = "SQUEEZEBENCH_SHARED_CACHE"


def user_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "squeezebench"


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


@dataclass(frozen=True)
class Settings:
    data_dir: Path
    cache_dir: Path
    download: bool  # only into the default data dir: a directory the user names is never written
    threads: int
    quiet: bool = False
    # A path or fsspec URL (s3://, gs://, an NFS mount) that builders publish to and measuring
    # machines read from; cache_dir stays the local working copy the runtimes load files from.
    shared_cache: str | None = None
    # A measuring machine only reads the shared cache (its credentials may be read-only).
    shared_read_only: bool = False


def resolve_settings(
    data_dir: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
    threads: int | None = None,
    quiet: bool = False,
    environ: dict[str, str] | None = None,
    shared_cache: str | None = None,
    shared_read_only: bool = False,
) -> Settings:
    env = os.environ if environ is None else environ
    cache = Path(cache_dir or env.get(ENV_CACHE_DIR) or user_cache_dir()).expanduser()
    named = data_dir or env.get(ENV_DATA_DIR)
    data = Path(named).expanduser() if named else cache / "data"
    if threads is not None and threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    return Settings(
        data_dir=data.resolve(),
        cache_dir=cache.resolve(),
        download=not named,
        threads=threads or available_cores(),
        quiet=quiet,
        shared_cache=shared_cache or env.get(ENV_SHARED_CACHE) or None,
        shared_read_only=shared_read_only,
    )
