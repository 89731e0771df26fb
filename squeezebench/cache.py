"""Content-addressed artifact cache.

An entry is a directory ``<root>/<namespace>/<key>/`` holding the files a builder
wrote plus ``MANIFEST.json`` (size and sha256 of each file). Entries are built in a
temporary sibling directory and renamed into place, so a crash never leaves a
half-written entry under its final name; every read re-hashes the files, and an
entry that fails verification is deleted and rebuilt, never served.

Concurrent runs on one cache directory are safe: building an entry holds an exclusive
file lock (``filelock``) named after its key, so when several processes want the same
entry one builds it and the others wait, then read (and verify) what it published. A
published entry is never written to again.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable

from filelock import FileLock

log = logging.getLogger(__name__)

MANIFEST = "MANIFEST.json"
_CHUNK = 1 << 20


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def content_key(parts: Any) -> str:
    """Stable hex key for any JSON-serialisable description of what an entry is built from."""
    blob = json.dumps(parts, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temp file in the same directory and a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class CacheCorrupt(Exception):
    """An entry did not match its manifest."""


class ArtifactCache:
    """Directory-per-entry cache with verified reads and atomic writes."""

    def __init__(self, root: Path | str):
        self.root = Path(root).expanduser()

    def entry_dir(self, namespace: str, key: str) -> Path:
        return self.root / namespace / key

    def verify(self, entry: Path) -> dict:
        """Return the manifest of ``entry`` or raise ``CacheCorrupt`` naming what is wrong."""
        mpath = entry / MANIFEST
        try:
            manifest = json.loads(mpath.read_text())
            files = manifest["files"]
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise CacheCorrupt(f"{mpath}: unreadable manifest ({e})") from None
        for name, meta in files.items():
            p = entry / name
            if not p.is_file():
                raise CacheCorrupt(f"{p}: missing")
            if p.stat().st_size != meta["size"]:
                raise CacheCorrupt(f"{p}: size {p.stat().st_size} != {meta['size']}")
            if sha256_file(p) != meta["sha256"]:
                raise CacheCorrupt(f"{p}: checksum mismatch")
        return manifest

    def lookup(self, namespace: str, key: str, *, remove_corrupt: bool = False) -> Path | None:
        """The verified entry, or None. A corrupt entry is removed only with ``remove_corrupt``
        (by a caller holding the entry's lock: another process may be replacing it)."""
        entry = self.entry_dir(namespace, key)
        if not entry.exists():
            return None
        try:
            self.verify(entry)
            return entry
        except CacheCorrupt as e:
            if remove_corrupt:
                log.warning("cache entry corrupt, rebuilding: %s", e)
                shutil.rmtree(entry, ignore_errors=True)
            return None

    def lock_path(self, namespace: str, key: str) -> Path:
        """Lock files live apart (``<root>/.locks/``) so a namespace lists only entries."""
        path = self.root / ".locks" / namespace / f"{key}.lock"
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    def get_or_build(
        self,
        namespace: str,
        key_parts: Any,
        build: Callable[[Path], dict | None],
    ) -> Path:
        """Return the entry for ``key_parts``, running ``build(tmpdir)`` when it is absent or corrupt.

        ``build`` writes its files into ``tmpdir`` and may return metadata, stored in the
        manifest under ``"meta"`` (read it back with :meth:`meta`). Across processes, one
        builds and the others wait for it (see the module docstring).
        """
        key = content_key(key_parts)
        hit = self.lookup(namespace, key)
        if hit is not None:
            return hit
        final = self.entry_dir(namespace, key)
        final.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(self.lock_path(namespace, key)):
            # Whoever held the lock before us may have published it meanwhile.
            hit = self.lookup(namespace, key, remove_corrupt=True)
            if hit is not None:
                return hit
            tmp = Path(tempfile.mkdtemp(prefix=f".{key}.tmp-", dir=final.parent))
            try:
                meta = build(tmp) or {}
                files = {
                    p.relative_to(tmp).as_posix(): {"size": p.stat().st_size, "sha256": sha256_file(p)}
                    for p in sorted(tmp.rglob("*"))
                    if p.is_file() and p.name != MANIFEST
                }
                manifest = {"key": key, "key_parts": key_parts, "files": files, "meta": meta}
                (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True, default=str))
                os.rename(tmp, final)
            finally:
                if tmp.exists():
                    shutil.rmtree(tmp, ignore_errors=True)
        return final

    @staticmethod
    def meta(entry: Path) -> dict:
        return json.loads((entry / MANIFEST).read_text()).get("meta", {})
