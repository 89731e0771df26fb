"""The shared tier of the artifact cache: a directory or fsspec URL several machines publish to.

Layout under the URL (a local path or NFS mount, ``s3://``, ``gs://``, ``memory://``)::

    <url>/<namespace>/<key>/<files...>       the entry's files
    <url>/<namespace>/<key>/MANIFEST.json    written LAST: the entry exists only once it does
    <url>/.leases/<namespace>/<key>.json     who is building the entry now

Object stores have no rename, so publishing uploads the files first and the manifest last; a
builder killed mid-upload leaves files without a manifest, which no reader serves and the next
builder overwrites. Readers verify every file against the manifest (in :mod:`squeezebench.cache`,
which owns the entry format; this module only moves bytes and leases).

Leases. A builder creates the lease object with an exclusive create (``open(path, "xb")``: local
and NFS paths use ``O_EXCL``, s3fs sends ``If-None-Match: *``, which AWS S3 and moto honour), then
reads it back to confirm it is the owner, and rewrites it every ``ttl / 4`` seconds (a heartbeat)
while it builds. A waiter polls for the manifest; a lease whose content has not changed for its
``ttl`` seconds, as timed by the waiter's own clock (so machines' clocks need not agree), belongs
to a dead builder and is taken over. Release deletes the lease.

Race windows, documented rather than hidden: a backend that cannot create exclusively (or
ignores ``If-None-Match``) falls back to write-then-read-back-owner, and two builders that write
within one round trip of each other may both believe they hold the lease; two waiters taking over
the same dead lease within one round trip may too. Either way the cost is a duplicate build, never
a wrong entry: every download is verified file by file against its manifest.
"""
from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Callable

log = logging.getLogger(__name__)

MANIFEST = "MANIFEST.json"
LEASES = ".leases"
DEFAULT_LEASE_TTL = 120.0


class SharedCacheError(ValueError):
    """The shared cache cannot be used (unreachable, missing, not writable); the message says why."""


def _cause(e: BaseException) -> str:
    """A short cause for messages: the S3 error code when there is one, else the exception type."""
    resp = getattr(e, "response", None) or getattr(e.__cause__, "response", None)
    code = resp.get("Error", {}).get("Code") if isinstance(resp, dict) else None
    return code or type(e).__name__


def _short(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [""])[0][:300]


class Lease:
    """A held build lease; :meth:`release` (or leaving the ``with`` block) deletes it."""

    def __init__(self, store: SharedStore, path: str, record: dict):
        self.store, self.path, self.record = store, path, record
        self._stop = threading.Event()
        self._beat = threading.Thread(target=self._heartbeat, daemon=True,
                                      name=f"lease-heartbeat {path}")
        self._beat.start()

    def _heartbeat(self) -> None:
        # Rewrite the lease while the build runs so waiters see it alive however long it takes.
        while not self._stop.wait(self.record["ttl"] / 4):
            try:
                if not self.held():
                    log.warning("lost the build lease %s (taken over as expired); "
                                "not renewing it", self.store.display(self.path))
                    return
                self.record = {**self.record, "beat": self.record["beat"] + 1, "time": time.time()}
                self.store.fs.pipe_file(self.path, json.dumps(self.record).encode())
            except Exception as e:  # a missed beat only shortens the lease; the build goes on
                log.warning("could not renew the build lease %s: %s", self.store.display(self.path), e)

    def held(self) -> bool:
        """Whether the lease object still names us as the owner."""
        return self.store._read_lease(self.path).get("owner") == self.record["owner"]

    def release(self) -> None:
        self._stop.set()
        self._beat.join()
        try:
            if self.held():  # never delete a successor's lease
                self.store.fs.rm_file(self.path)
        except FileNotFoundError:
            pass
        except Exception as e:  # a stale lease only delays the next builder by its ttl
            log.warning("could not release the build lease %s: %s", self.store.display(self.path), e)

    def __enter__(self) -> Lease:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


class SharedStore:
    """A shared cache at ``url``, reached through ``fsspec.core.url_to_fs(url, **storage_options)``.

    Construction probes the store once: it must be reachable and, unless ``read_only``, writable
    (a probe object is written and deleted), so a wrong URL or missing permission fails at start
    with one clear :class:`SharedCacheError` instead of after a long build.

    S3-compatible endpoints (MinIO, moto, Ceph) are named by ``storage_options``
    (``{"client_kwargs": {"endpoint_url": ...}}``) or, without code, by the environment variable
    ``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL`` (read by botocore) together with the usual
    ``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY``.
    """

    def __init__(self, url: str, *, read_only: bool = False, storage_options: dict | None = None,
                 lease_ttl: float = DEFAULT_LEASE_TTL, poll: float = 0.5):
        try:
            import fsspec.core
        except ImportError:
            raise SharedCacheError(f"shared cache {url} needs fsspec: pip install fsspec "
                                   "(and s3fs for s3://, gcsfs for gs://)") from None
        self.url, self.read_only = str(url), read_only
        self.lease_ttl, self.poll = float(lease_ttl), float(poll)
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:12]}"
        try:
            # A fresh instance: fsspec caches filesystems by their arguments, which would keep
            # an endpoint taken from the environment at the first call.
            self.fs, root = fsspec.core.url_to_fs(self.url, skip_instance_cache=True,
                                                  **(storage_options or {}))
        except ImportError as e:
            raise SharedCacheError(f"shared cache {self.url} needs a package fsspec could not import "
                                   f"({_short(e)})") from None
        except Exception as e:
            raise SharedCacheError(f"shared cache {self.url} is not a usable URL "
                                   f"({_cause(e)}): {_short(e)}") from None
        self.root = root.rstrip("/")
        self.local = "file" in _protocols(self.fs)
        self._probe()

    # -- paths ---------------------------------------------------------------------------------

    def entry_path(self, namespace: str, key: str) -> str:
        return f"{self.root}/{namespace}/{key}"

    def lease_path(self, namespace: str, key: str) -> str:
        return f"{self.root}/{LEASES}/{namespace}/{key}.json"

    def display(self, path: str) -> str:
        """``path`` as the user would write it (with the URL's protocol), for messages."""
        return self.fs.unstrip_protocol(path) if not self.local else path

    # -- probing -------------------------------------------------------------------------------

    def _probe(self) -> None:
        try:
            if self.local and not self.read_only:
                self.fs.makedirs(self.root, exist_ok=True)
            if self.read_only:
                if not self.fs.exists(self.root):
                    log.warning("shared cache %s is empty or does not exist: every entry will "
                                "be a miss", self.url)
                return
            probe = f"{self.root}/.probe-{uuid.uuid4().hex}"
            self.fs.pipe_file(probe, b"squeezebench write probe")
            self.fs.rm_file(probe)
        except Exception as e:
            denied = isinstance(e, PermissionError) or _cause(e) in ("AccessDenied", "403")
            what = ("not readable" if self.read_only else "not writable") if denied else \
                "missing" if isinstance(e, FileNotFoundError) else "not reachable"
            hint = "" if what != "not writable" else \
                " (a measure-only consumer that never publishes can open it read-only)"
            raise SharedCacheError(f"shared cache {self.url} is {what} ({_cause(e)}): "
                                   f"{_short(e)}{hint}") from None

    def error(self, doing: str, e: BaseException, *, local: Path | None = None) -> SharedCacheError:
        """The one-line error for a failed operation, saying what survives locally."""
        kept = f"; nothing was lost locally: the entry stays in {local}" if local else ""
        return SharedCacheError(f"shared cache {self.url}: could not {doing} ({_cause(e)}): "
                                f"{_short(e)}{kept}")

    # -- entries -------------------------------------------------------------------------------

    def read_manifest(self, namespace: str, key: str) -> bytes | None:
        """The published manifest's bytes, or None when the entry is not (fully) published."""
        try:
            return self.fs.cat_file(f"{self.entry_path(namespace, key)}/{MANIFEST}")
        except FileNotFoundError:
            return None

    def download(self, namespace: str, key: str, names: list[str], dest: Path) -> None:
        """Copy the entry's files ``names`` into ``dest`` (verification is the caller's)."""
        base = self.entry_path(namespace, key)
        for name in names:
            target = dest / name
            if ".." in Path(name).parts or Path(name).is_absolute():
                raise FileNotFoundError(f"refusing manifest path {name!r}")
            target.parent.mkdir(parents=True, exist_ok=True)
            self.fs.get_file(f"{base}/{name}", str(target))

    def publish(self, namespace: str, key: str, src: Path, names: list[str], manifest: bytes) -> None:
        """Upload ``names`` from ``src``, then the manifest: only then do readers see the entry."""
        base = self.entry_path(namespace, key)
        self.delete(namespace, key)  # leftovers of a killed upload must not mix with this one
        for parent in sorted({f"{base}/{n}".rpartition("/")[0] for n in names} | {base}):
            self.fs.makedirs(parent, exist_ok=True)
        for name in names:
            self.fs.put_file(str(src / name), f"{base}/{name}")
        final = f"{base}/{MANIFEST}"
        if self.local:
            # A local or NFS reader could see a half-written file: write aside, then rename.
            tmp = f"{base}/.{MANIFEST}.{uuid.uuid4().hex}"
            self.fs.pipe_file(tmp, manifest)
            self.fs.mv(tmp, final)
        else:
            self.fs.pipe_file(final, manifest)  # one PUT: atomic on object stores

    def delete(self, namespace: str, key: str) -> None:
        """Remove an entry, manifest first so no reader starts on what follows."""
        base = self.entry_path(namespace, key)
        try:
            self.fs.rm_file(f"{base}/{MANIFEST}")
        except FileNotFoundError:
            pass
        self.fs.invalidate_cache(base)
        try:
            self.fs.rm(base, recursive=True)
        except FileNotFoundError:
            pass

    def entries(self) -> list[tuple[str, str]]:
        """``(namespace, key)`` of every published entry (those with a manifest)."""
        self.fs.invalidate_cache()
        found = []
        root = self.root.rstrip("/")
        # Namespaces nest (artifacts/onnx): every <namespace...>/<key>/MANIFEST.json below the root.
        for depth in (3, 4):  # namespace (1 or 2 levels) / key / MANIFEST.json
            for path in self.fs.glob("/".join([root, *["*"] * (depth - 1), MANIFEST])):
                parts = path.rstrip("/").split("/")[-depth:]
                namespace, key = "/".join(parts[:-2]), parts[-2]
                if not namespace.startswith("."):
                    found.append((namespace, key))
        return sorted(set(found))

    # -- leases --------------------------------------------------------------------------------

    def _read_lease(self, path: str) -> dict:
        """The lease's record; ``{}`` when absent; ``{"raw": bytes}`` while unreadable (being written)."""
        try:
            raw = self.fs.cat_file(path)
        except FileNotFoundError:
            return {}
        try:
            record = json.loads(raw)
            return record if isinstance(record, dict) else {"raw": raw}
        except ValueError:
            return {"raw": raw}

    def _create_lease(self, path: str) -> dict | None:
        """Create the lease exclusively; our record, or None when someone else holds it."""
        record = {"owner": self.owner, "host": socket.gethostname(), "pid": os.getpid(),
                  "time": time.time(), "ttl": self.lease_ttl, "beat": 0}
        data = json.dumps(record).encode()
        self.fs.makedirs(path.rpartition("/")[0], exist_ok=True)
        try:
            with self.fs.open(path, "xb") as f:
                f.write(data)
        except FileExistsError:
            return None
        except (ValueError, NotImplementedError, TypeError):
            # No exclusive create on this backend: write if absent, read back (race window).
            if self._read_lease(path):
                return None
            self.fs.pipe_file(path, data)
            time.sleep(min(self.poll, 0.2))  # let a concurrent writer land before we read back
        # Read back: a store that ignores If-None-Match would have let a second writer win.
        return record if self._read_lease(path).get("owner") == self.owner else None

    def acquire(self, namespace: str, key: str, ready: Callable[[], bool]) -> Lease | None:
        """Hold the build lease of an entry, waiting while a live builder holds it.

        Returns None instead when ``ready()`` turns true while waiting (the entry was published).
        A lease unchanged for its ttl is taken over.
        """
        path = self.lease_path(namespace, key)
        seen: Any = None
        since = time.monotonic()
        announced = False
        while True:
            record = self._create_lease(path)
            if record is not None:
                return Lease(self, path, record)
            if ready():
                return None
            current = self._read_lease(path)
            if current != seen:
                seen, since = current, time.monotonic()
            elif current:
                ttl = float(current.get("ttl", self.lease_ttl)) if "ttl" in current else self.lease_ttl
                if time.monotonic() - since > ttl:
                    # Unchanged for its ttl: the builder died. Re-read right before deleting so
                    # a lease another waiter just took over is left alone (window: one round trip).
                    if self._read_lease(path) == current:
                        log.warning("taking over the expired build lease %s (%s)",
                                    self.display(path), current.get("owner", "unreadable"))
                        try:
                            self.fs.rm_file(path)
                        except FileNotFoundError:
                            pass
                    seen = None
                    continue
            if current and not announced:
                log.info("waiting for %s to build %s/%s into %s", current.get("owner", "another builder"),
                         namespace, key, self.url)
                announced = True
            time.sleep(self.poll)


def _protocols(fs: Any) -> set[str]:
    proto = fs.protocol
    return {proto} if isinstance(proto, str) else set(proto)
