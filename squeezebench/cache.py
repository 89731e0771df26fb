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
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

from filelock import FileLock

from squeezebench.shared_cache import MANIFEST, Lease, SharedCacheError, SharedStore

log = logging.getLogger(__name__)

__all__ = ["ArtifactCache", "CacheCorrupt", "CacheMiss", "MANIFEST", "SharedCacheError",
           "SharedStore", "atomic_write_bytes", "content_key", "sha256_file"]

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


class CacheMiss(Exception):
    """An entry is missing (locally and in the shared store) and ``forbid_build`` refused to build it."""


class ArtifactCache:
    """Directory-per-entry cache with verified reads and atomic writes, optionally backed by a
    shared store (``shared``: a path or fsspec URL, or a ready :class:`SharedStore`).

    ``shared_read_only`` opens the shared store for reading only (a measure-only consumer): its
    misses are built locally, never published. ``shared_options`` are fsspec storage options
    (e.g. ``{"client_kwargs": {"endpoint_url": ...}}`` for an S3-compatible server).
    """

    #: When set, called as ``forbid_build(namespace, key_parts)`` before building a missing entry;
    #: a returned message makes :meth:`get_or_build` raise :class:`CacheMiss` instead of building.
    forbid_build: Callable[[str, Any], str | None] | None = None

    def __init__(self, root: Path | str, shared: str | SharedStore | None = None, *,
                 shared_read_only: bool = False, shared_options: dict | None = None):
        self.root = Path(root).expanduser()
        if isinstance(shared, SharedStore) or shared is None:
            self.shared = shared
        else:
            self.shared = SharedStore(str(shared), read_only=shared_read_only,
                                      storage_options=shared_options)

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
        builds and the others wait for it (see the module docstring); with a shared store,
        across machines too, and the entry is downloaded from it rather than built when there.
        """
        key = content_key(key_parts)
        hit = self.lookup(namespace, key)
        if hit is not None:
            return hit
        final = self.entry_dir(namespace, key)
        with self._locked(namespace, key) as hit:
            if hit is not None:
                return hit
            if self.shared is None:
                self._check_allowed(namespace, key_parts)
                self._build_into(namespace, key, key_parts, build)
                return final
            return self._get_or_build_shared(namespace, key, key_parts, build)

    @contextmanager
    def _locked(self, namespace: str, key: str) -> Iterator[Path | None]:
        """Hold the entry's lock; yields the verified entry if one was published meanwhile (by
        whoever held the lock before us), else None (a corrupt one is removed)."""
        self.entry_dir(namespace, key).parent.mkdir(parents=True, exist_ok=True)
        with FileLock(self.lock_path(namespace, key)):
            yield self.lookup(namespace, key, remove_corrupt=True)

    def inventory(self, skip: tuple[str, ...] = ("evaluations", "datasets")) -> dict[str, dict[str, str]]:
        """``{"<namespace>/<key>": {file: sha256}}`` of every local entry, from the manifests, but
        those of the ``skip`` namespaces (by default the measurements and decoded data): what two
        builds must agree on, file for file."""
        return {f"{ns}/{key}": {n: m["sha256"] for n, m in json.loads(
                    (self.entry_dir(ns, key) / MANIFEST).read_text())["files"].items()}
                for ns, key in self.entries() if not ns.startswith(skip)}

    def _check_allowed(self, namespace: str, key_parts: Any) -> None:
        if self.forbid_build is not None:
            message = self.forbid_build(namespace, key_parts)
            if message:
                raise CacheMiss(message)

    def _build_into(self, namespace: str, key: str, key_parts: Any,
                    build: Callable[[Path], dict | None]) -> Path:
        """Build in a temp sibling and rename it to the final entry (caller holds the local lock)."""
        final = self.entry_dir(namespace, key)
        # A builder killed mid-entry left its temp dir (never served: hidden name, no rename); the
        # lock we hold means no live builder owns one, so clear them.
        for stale in final.parent.glob(f".{key}.tmp-*"):
            shutil.rmtree(stale, ignore_errors=True)
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

    def _download(self, namespace: str, key: str, raw: bytes) -> Path | None:
        """Download the shared entry whose manifest is ``raw`` and rename it into place once every
        file verifies; None (and nothing left behind) when it does not (caller holds the local lock)."""
        store, final = self._store(), self.entry_dir(namespace, key)
        tmp = Path(tempfile.mkdtemp(prefix=f".{key}.pull-", dir=final.parent))
        try:
            try:
                manifest = json.loads(raw)
                names = list(manifest["files"])
                if manifest.get("key") != key:
                    raise CacheCorrupt(f"manifest names key {manifest.get('key')!r}")
                store.download(namespace, key, names, tmp)
                (tmp / MANIFEST).write_bytes(raw)
                self.verify(tmp)
            except (ValueError, KeyError, TypeError, AttributeError, FileNotFoundError,
                    CacheCorrupt) as e:
                log.warning("shared cache entry %s is corrupt (%s)",
                            store.display(store.entry_path(namespace, key)), e)
                return None
            os.rename(tmp, final)
            return final
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)

    def _store(self) -> SharedStore:
        if self.shared is None:
            raise ValueError("this cache has no shared store")
        return self.shared

    def _read_shared(self, namespace: str, key: str) -> bytes | None:
        """The shared manifest's bytes or None; a failing store is a :class:`SharedCacheError`."""
        store = self._store()
        try:
            return store.read_manifest(namespace, key)
        except Exception as e:
            raise store.error(f"read {namespace}/{key}", e) from None

    def _get_or_build_shared(self, namespace: str, key: str, key_parts: Any,
                             build: Callable[[Path], dict | None]) -> Path:
        """The local miss path with a shared store (caller holds the local lock)."""
        store = self._store()
        final = self.entry_dir(namespace, key)
        raw = self._read_shared(namespace, key)
        if raw is not None:
            got = self._download_or_raise(namespace, key, raw)
            if got is not None:
                return got
        bad = raw  # a corrupt published manifest: wait for something else to appear
        if raw is None or store.read_only:
            # Missing everywhere (or corrupt and not ours to delete): build only if allowed.
            self._check_allowed(namespace, key_parts)
        if store.read_only:
            if bad is not None:
                log.warning("building %s/%s locally: the shared copy is corrupt and the store "
                            "is read-only", namespace, key)
            return self._build_into(namespace, key, key_parts, build)

        def published() -> bool:
            current = store.read_manifest(namespace, key)
            return current is not None and current != bad

        while True:
            try:
                lease = store.acquire(namespace, key, ready=published)
            except Exception as e:
                raise store.error(f"take the build lease of {namespace}/{key}", e) from None
            if lease is None:  # another machine published it while we waited
                raw = self._read_shared(namespace, key)
                if raw is not None:
                    got = self._download_or_raise(namespace, key, raw)
                    if got is not None:
                        return got
                    bad = raw
                continue
            with lease:
                # Published between our look and the lease, or corrupt: decide under the lease.
                raw = self._read_shared(namespace, key)
                if raw is not None:
                    got = self._download_or_raise(namespace, key, raw)
                    if got is not None:
                        return got
                    try:
                        store.delete(namespace, key)
                    except Exception as e:
                        raise store.error(f"delete the corrupt {namespace}/{key}", e) from None
                    log.warning("deleted the corrupt shared entry %s/%s", namespace, key)
                self._check_allowed(namespace, key_parts)
                self._build_into(namespace, key, key_parts, build)
                if not self._still_held(lease):
                    log.warning("not publishing %s/%s: its build lease expired and was taken "
                                "over (is the build blocking the heartbeat?)", namespace, key)
                    return final
                self._publish(namespace, key)
                return final

    @staticmethod
    def _still_held(lease: Lease) -> bool:
        try:
            return lease.held()
        except Exception:  # store unreadable now: publishing will say so, clearly
            return True

    def _download_or_raise(self, namespace: str, key: str, raw: bytes) -> Path | None:
        try:
            return self._download(namespace, key, raw)
        except SharedCacheError:
            raise
        except Exception as e:
            raise self._store().error(f"download {namespace}/{key}", e) from None

    def _publish(self, namespace: str, key: str) -> None:
        """Upload a verified local entry (files first, manifest last)."""
        store, entry = self._store(), self.entry_dir(namespace, key)
        try:
            manifest = self.verify(entry)
            store.publish(namespace, key, entry, sorted(manifest["files"]),
                          (entry / MANIFEST).read_bytes())
        except CacheCorrupt:
            raise
        except Exception as e:
            raise store.error(f"publish {namespace}/{key}", e, local=entry) from None

    def pull(self, namespace: str, key: str) -> Path | None:
        """The verified local entry, downloading it from the shared store when only published
        there; None when neither has it (or the shared copy is corrupt). Never builds."""
        hit = self.lookup(namespace, key)
        if hit is not None or self.shared is None:
            return hit
        with self._locked(namespace, key) as hit:
            if hit is not None:
                return hit
            raw = self._read_shared(namespace, key)
            return None if raw is None else self._download_or_raise(namespace, key, raw)

    def push(self, namespace: str, key: str) -> bool:
        """Publish a verified local entry the shared store lacks; True when it uploaded."""
        store = self._store()
        if store.read_only:
            raise SharedCacheError(f"shared cache {store.url} was opened read-only: cannot publish")
        if self.lookup(namespace, key) is None:
            raise CacheCorrupt(f"{self.entry_dir(namespace, key)}: no verified local entry to publish")
        try:
            lease = store.acquire(namespace, key,
                                  ready=lambda: store.read_manifest(namespace, key) is not None)
        except Exception as e:
            raise store.error(f"take the build lease of {namespace}/{key}", e) from None
        if lease is None:
            return False
        with lease:
            if self._read_shared(namespace, key) is not None:
                return False
            self._publish(namespace, key)
            return True

    def entries(self) -> list[tuple[str, str]]:
        """``(namespace, key)`` of every local entry with a manifest (verify with :meth:`lookup`)."""
        if not self.root.is_dir():
            return []
        # Namespaces nest (artifacts/onnx): the entry is the manifest's folder, its namespace the rest.
        out = []
        for p in self.root.rglob(MANIFEST):
            rel = p.parent.relative_to(self.root).parts
            if len(rel) >= 2 and not any(x.startswith(".") for x in rel):
                out.append(("/".join(rel[:-1]), rel[-1]))
        return sorted(out)

    @staticmethod
    def meta(entry: Path) -> dict:
        return json.loads((entry / MANIFEST).read_text()).get("meta", {})
