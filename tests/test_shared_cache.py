"""Shared cache tier: publish once, download elsewhere verified, corrupt or partial shared entries
rebuilt, one builder across machines, dead builders' leases taken over, clear errors for an
unreachable or read-only store; on a local directory, ``memory://`` and an S3 server (moto)."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from pathlib import Path

import pytest

from squeezebench.cache import ArtifactCache, CacheMiss, content_key
from squeezebench.shared_cache import SharedCacheError, SharedStore

pytest.importorskip("fsspec", reason="the shared cache needs fsspec")

NS, PARTS = "trained", {"model": "m", "epochs": 2}
KEY = content_key(PARTS)
PAYLOAD = b"weights" * 1000


def _builder(calls: list, payload: bytes = PAYLOAD, sleep: float = 0.0):
    lock = threading.Lock()

    def build(tmp: Path) -> dict:
        with lock:
            calls.append(tmp)
        time.sleep(sleep)  # a slow build: a concurrent builder arrives meanwhile
        (tmp / "model.bin").write_bytes(payload)
        (tmp / "sub").mkdir()
        (tmp / "sub" / "extra.json").write_text('{"x": 1}')
        return {"built_by": str(tmp)}
    return build


# -- stores ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def moto_endpoint():
    pytest.importorskip("s3fs", reason="s3:// needs s3fs")
    server_mod = pytest.importorskip("moto.server", reason="the S3 tests need moto[server]")
    boto3 = pytest.importorskip("boto3")
    server = server_mod.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    client = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id="testing",
                          aws_secret_access_key="testing", region_name="us-east-1")
    yield endpoint, client
    server.stop()


def _s3_options(endpoint: str, key: str = "testing", secret: str = "testing") -> dict:
    return {"key": key, "secret": secret,
            "client_kwargs": {"endpoint_url": endpoint, "region_name": "us-east-1"}}


@pytest.fixture(params=["local", "memory", "s3"])
def store(request, tmp_path):
    """``(url, storage_options)`` of an empty shared store of each kind."""
    if request.param == "local":
        return str(tmp_path / "shared"), {}
    if request.param == "memory":
        return f"memory://sb-{uuid.uuid4().hex[:8]}/cache", {}
    endpoint, client = request.getfixturevalue("moto_endpoint")
    bucket = f"sb-{uuid.uuid4().hex[:10]}"
    client.create_bucket(Bucket=bucket)
    return f"s3://{bucket}/cache", _s3_options(endpoint)


def _cache(tmp_path: Path, name: str, store, **kw) -> ArtifactCache:
    url, options = store
    if kw:
        return ArtifactCache(tmp_path / name, SharedStore(url, storage_options=options, **kw))
    return ArtifactCache(tmp_path / name, shared=url, shared_options=options)


def _files(entry: Path) -> dict[str, bytes]:
    return {p.relative_to(entry).as_posix(): p.read_bytes() for p in sorted(entry.rglob("*")) if p.is_file()}


# -- publish and read ------------------------------------------------------------------------


def test_second_machine_downloads_instead_of_building(tmp_path, store):
    a, b, calls = _cache(tmp_path, "a", store), _cache(tmp_path, "b", store), []
    ea = a.get_or_build(NS, PARTS, _builder(calls))
    eb = b.get_or_build(NS, PARTS, _builder(calls))
    assert len(calls) == 1, "the second machine must download the published entry, not build it"
    assert eb == tmp_path / "b" / NS / KEY and eb != ea
    assert _files(ea) == _files(eb)
    assert ArtifactCache.meta(eb) == ArtifactCache.meta(ea)
    b.verify(eb)
    assert a.shared.entries() == [(NS, KEY)] and b.entries() == [(NS, KEY)]
    assert b.get_or_build(NS, PARTS, _builder(calls)) == eb and len(calls) == 1


def test_manifest_is_uploaded_last(tmp_path, store):
    cache = _cache(tmp_path, "a", store)
    fs, order = cache.shared.fs, []
    put_file, pipe_file = fs.put_file, fs.pipe_file

    def spy_put(lpath, rpath, *a, **k):
        order.append(rpath.rsplit("/", 1)[-1])
        return put_file(lpath, rpath, *a, **k)

    def spy_pipe(path, data, *a, **k):
        order.append(path.rsplit("/", 1)[-1])
        return pipe_file(path, data, *a, **k)

    fs.put_file, fs.pipe_file = spy_put, spy_pipe
    cache.get_or_build(NS, PARTS, _builder([]))
    assert "MANIFEST.json" in order[-1], order
    assert {"model.bin", "extra.json"} <= set(order[:-1]) and not any("MANIFEST" in n for n in order[:-1])


def test_pull_and_list_round_trip(tmp_path, store):
    a = _cache(tmp_path, "a", store)
    for i in range(3):
        a.get_or_build(NS, {"i": i}, _builder([], payload=b"%d" % i))
    fresh = _cache(tmp_path, "fresh", store)
    listed = fresh.shared.entries()
    assert listed == sorted((NS, content_key({"i": i})) for i in range(3))
    for ns, key in listed:
        assert fresh.pull(ns, key) is not None
    assert fresh.entries() == listed
    assert {(fresh.root / ns / k / "model.bin").read_bytes() for ns, k in listed} == {b"0", b"1", b"2"}
    assert fresh.pull(NS, "0" * 24) is None


def test_push_publishes_a_local_only_entry(tmp_path, store):
    local_only = ArtifactCache(tmp_path / "a")
    entry = local_only.get_or_build(NS, PARTS, _builder([]))
    a = _cache(tmp_path, "a", store)
    assert a.push(NS, KEY) is True and a.push(NS, KEY) is False
    b, calls = _cache(tmp_path, "b", store), []
    assert _files(b.get_or_build(NS, PARTS, _builder(calls))) == _files(entry) and not calls


# -- corrupt and partial shared entries ------------------------------------------------------


@pytest.mark.parametrize("damage", ["flip", "truncate", "delete", "manifest"])
def test_corrupt_shared_entry_is_rebuilt_and_republished(tmp_path, store, damage, caplog):
    a, calls = _cache(tmp_path, "a", store), []
    a.get_or_build(NS, PARTS, _builder(calls))
    fs, base = a.shared.fs, a.shared.entry_path(NS, KEY)
    blob = fs.cat_file(f"{base}/model.bin")
    if damage == "flip":
        fs.pipe_file(f"{base}/model.bin", blob[:3] + bytes([blob[3] ^ 0xFF]) + blob[4:])
    elif damage == "truncate":
        fs.pipe_file(f"{base}/model.bin", blob[:10])
    elif damage == "delete":
        fs.rm_file(f"{base}/model.bin")
    else:
        fs.pipe_file(f"{base}/MANIFEST.json", b"{not json")
    b = _cache(tmp_path, "b", store)
    eb = b.get_or_build(NS, PARTS, _builder(calls))
    assert len(calls) == 2, "a corrupt shared entry must be rebuilt, never served"
    assert (eb / "model.bin").read_bytes() == PAYLOAD and "corrupt" in caplog.text
    assert not [p for p in (tmp_path / "b" / NS).iterdir() if p.name != KEY], "no temp dir may remain"
    c = _cache(tmp_path, "c", store)  # the rebuilt entry was re-published and verifies
    assert _files(c.get_or_build(NS, PARTS, _builder(calls))) == _files(eb) and len(calls) == 2


def test_partial_upload_is_not_served(tmp_path, store):
    """A builder killed mid-upload left files but no manifest: nobody reads it; the next builder
    overwrites it (its stray files included)."""
    a = _cache(tmp_path, "a", store)
    fs, base = a.shared.fs, a.shared.entry_path(NS, KEY)
    fs.makedirs(base, exist_ok=True)
    fs.pipe_file(f"{base}/model.bin", b"half-uploaded")
    fs.pipe_file(f"{base}/stray.bin", b"from the dead builder")
    assert a.shared.entries() == [] and a.pull(NS, KEY) is None
    calls = []
    entry = a.get_or_build(NS, PARTS, _builder(calls))
    assert len(calls) == 1 and (entry / "model.bin").read_bytes() == PAYLOAD
    fs.invalidate_cache()
    assert fs.cat_file(f"{base}/model.bin") == PAYLOAD
    assert not fs.exists(f"{base}/stray.bin")
    b = _cache(tmp_path, "b", store)
    assert b.pull(NS, KEY) is not None


# -- concurrent builders and leases ----------------------------------------------------------


def test_concurrent_builders_build_once(tmp_path, store):
    calls, results, errors = [], {}, []
    go = threading.Barrier(2)

    def machine(name: str) -> None:
        try:
            cache = _cache(tmp_path, name, store, poll=0.05)
            go.wait()
            results[name] = cache.get_or_build(NS, PARTS, _builder(calls, sleep=0.5))
        except BaseException as e:  # surfaced below with the thread's name
            errors.append((name, e))

    threads = [threading.Thread(target=machine, args=(n,)) for n in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    assert len(calls) == 1, f"built {len(calls)} times"
    assert _files(results["a"]) == _files(results["b"])
    cache = _cache(tmp_path, "c", store)
    assert not cache.shared.fs.exists(cache.shared.lease_path(NS, KEY)), "the lease must be released"


_RACER = textwrap.dedent("""
    import os, sys, time
    from pathlib import Path
    from squeezebench.cache import ArtifactCache

    local, shared, log, go = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3]), float(sys.argv[4])
    cache = ArtifactCache(local, shared=shared)
    cache.shared.poll = 0.05
    while time.time() < go:  # both machines ask for the entry at the same moment
        time.sleep(0.001)

    def build(tmp):
        with open(log, "a") as f:
            f.write(f"{os.getpid()}\\n")
        time.sleep(0.5)
        (tmp / "model.bin").write_bytes(b"trained by %d" % os.getpid())

    entry = cache.get_or_build("trained", {"model": "m"}, build)
    print((entry / "model.bin").read_bytes().decode())
""")


def test_two_processes_on_a_shared_directory_build_once(tmp_path):
    script, log = tmp_path / "racer.py", tmp_path / "builds.log"
    script.write_text(_RACER)
    go = time.time() + 3.0
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    procs = [subprocess.Popen([sys.executable, str(script), str(tmp_path / f"local{i}"),
                               str(tmp_path / "shared"), str(log), str(go)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
             for i in range(2)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    builders = log.read_text().split()
    assert len(builders) == 1, f"built {len(builders)} times (pids {builders})"
    assert {o.strip() for o, _ in outs} == {f"trained by {builders[0]}"}


def test_lease_is_exclusive(tmp_path, store):
    one = _cache(tmp_path, "a", store).shared
    two = _cache(tmp_path, "b", store).shared
    path = one.lease_path(NS, KEY)
    assert one._create_lease(path) is not None
    assert two._create_lease(path) is None, "a second exclusive create must fail"
    assert json.loads(two.fs.cat_file(path))["owner"] == one.owner


def test_expired_lease_is_taken_over(tmp_path, store, caplog):
    a = _cache(tmp_path, "a", store, poll=0.05)
    fs, path = a.shared.fs, a.shared.lease_path(NS, KEY)
    fs.makedirs(path.rpartition("/")[0], exist_ok=True)
    dead = {"owner": "dead-host:1:x", "time": time.time(), "ttl": 0.5, "beat": 0}
    fs.pipe_file(path, json.dumps(dead).encode())  # its builder died: nothing renews it
    calls, t0 = [], time.monotonic()
    entry = a.get_or_build(NS, PARTS, _builder(calls))
    assert len(calls) == 1 and (entry / "model.bin").read_bytes() == PAYLOAD
    assert time.monotonic() - t0 >= 0.5, "a lease must not be taken over before its ttl"
    assert "taking over the expired build lease" in caplog.text
    fs.invalidate_cache()
    assert not fs.exists(path)


def test_live_lease_is_waited_for_and_a_failed_build_hands_over(tmp_path, store):
    """A builder renewing its lease is waited for past the ttl; when it gives up without
    publishing, the waiter builds."""
    holder = _cache(tmp_path, "a", store, lease_ttl=0.4, poll=0.05).shared
    lease = holder.acquire(NS, KEY, ready=lambda: False)
    assert lease is not None
    calls, done = [], []
    waiter = _cache(tmp_path, "b", store, lease_ttl=0.4, poll=0.05)
    t = threading.Thread(target=lambda: done.append(waiter.get_or_build(NS, PARTS, _builder(calls))))
    t.start()
    time.sleep(1.5)  # several ttls: the heartbeat keeps the lease alive
    assert not calls and not done, "a live (renewed) lease was taken over"
    lease.release()
    t.join(30)
    assert len(calls) == 1 and done and (done[0] / "model.bin").read_bytes() == PAYLOAD


def test_without_exclusive_create_falls_back_to_read_back(tmp_path, monkeypatch):
    store = SharedStore(f"memory://sb-{uuid.uuid4().hex[:8]}", poll=0.05)
    real_open = store.fs.open

    def no_x(path, mode="rb", **kw):
        if "x" in mode:
            raise ValueError(f"unsupported mode {mode}")
        return real_open(path, mode, **kw)

    monkeypatch.setattr(store.fs, "open", no_x)
    path = store.lease_path(NS, KEY)
    assert store._create_lease(path) is not None
    other = SharedStore(store.url)
    monkeypatch.setattr(other.fs, "open", no_x)
    assert other._create_lease(path) is None
    calls = []
    ArtifactCache(tmp_path / "x", store).get_or_build(NS, {"other": 1}, _builder(calls))
    assert len(calls) == 1


# -- errors ----------------------------------------------------------------------------------


def _closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


@pytest.mark.parametrize("read_only", [False, True])
def test_unreachable_store_is_one_clear_error(tmp_path, read_only):
    pytest.importorskip("s3fs", reason="s3:// needs s3fs")
    endpoint = f"http://127.0.0.1:{_closed_port()}"
    options = {**_s3_options(endpoint),
               "config_kwargs": {"connect_timeout": 1, "read_timeout": 1, "retries": {"max_attempts": 1}}}
    t0 = time.monotonic()
    with pytest.raises(SharedCacheError) as e:
        ArtifactCache(tmp_path, shared="s3://bucket/cache", shared_options=options,
                      shared_read_only=read_only)
    message = str(e.value)
    assert message.startswith("shared cache s3://bucket/cache is not reachable (EndpointConnectionError)")
    assert "\n" not in message and endpoint in message
    assert time.monotonic() - t0 < 30


def test_missing_bucket_is_named(tmp_path, moto_endpoint):
    endpoint, _ = moto_endpoint
    with pytest.raises(SharedCacheError, match=r"s3://no-such-bucket-sb/x is missing \(NoSuchBucket\)"):
        ArtifactCache(tmp_path, shared="s3://no-such-bucket-sb/x", shared_options=_s3_options(endpoint))


def test_endpoint_from_the_environment(tmp_path, moto_endpoint, monkeypatch):
    """No code needed for an S3-compatible server: botocore reads AWS_ENDPOINT_URL."""
    endpoint, client = moto_endpoint
    bucket = f"sb-{uuid.uuid4().hex[:10]}"
    client.create_bucket(Bucket=bucket)
    for var, value in {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "testing",
                       "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(var, value)
    calls = []
    ArtifactCache(tmp_path / "a", shared=f"s3://{bucket}/c").get_or_build(NS, PARTS, _builder(calls))
    ArtifactCache(tmp_path / "b", shared=f"s3://{bucket}/c").get_or_build(NS, PARTS, _builder(calls))
    assert len(calls) == 1
    assert client.head_object(Bucket=bucket, Key=f"c/{NS}/{KEY}/MANIFEST.json")


@pytest.fixture
def read_only_s3(moto_endpoint):
    """A bucket whose user may read everything but write only leases and probes under ``lease/``
    and nothing under ``ro/``: moto's IAM enforcement is switched on for the test."""
    from moto import settings
    from moto.core.authorization import ActionAuthenticatorMixin

    endpoint, client = moto_endpoint
    boto3 = pytest.importorskip("boto3")
    bucket = f"sb-{uuid.uuid4().hex[:10]}"
    client.create_bucket(Bucket=bucket)
    iam = boto3.client("iam", endpoint_url=endpoint, aws_access_key_id="testing",
                       aws_secret_access_key="testing", region_name="us-east-1")
    user = f"reader-{bucket}"
    iam.create_user(UserName=user)
    policy = {"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Action": "s3:*", "Resource": "*"},
        {"Effect": "Deny", "Action": ["s3:PutObject", "s3:DeleteObject"],
         "Resource": [f"arn:aws:s3:::{bucket}/ro/*", f"arn:aws:s3:::{bucket}/lease/{NS}/*"]}]}
    iam.put_user_policy(UserName=user, PolicyName="read-only", PolicyDocument=json.dumps(policy))
    key = iam.create_access_key(UserName=user)["AccessKey"]
    before = settings.INITIAL_NO_AUTH_ACTION_COUNT
    settings.INITIAL_NO_AUTH_ACTION_COUNT, ActionAuthenticatorMixin.request_count = 0, 0
    try:
        yield bucket, _s3_options(endpoint, key["AccessKeyId"], key["SecretAccessKey"])
    finally:
        settings.INITIAL_NO_AUTH_ACTION_COUNT = before


def test_read_only_s3_store(tmp_path, read_only_s3):
    bucket, options = read_only_s3
    with pytest.raises(SharedCacheError) as e:
        ArtifactCache(tmp_path / "a", shared=f"s3://{bucket}/ro", shared_options=options)
    assert str(e.value).startswith(f"shared cache s3://{bucket}/ro is not writable (AccessDenied)")
    assert "read-only" in str(e.value) and "\n" not in str(e.value)
    # A measure-only consumer opens it read-only: it reads, builds its misses locally, never writes.
    reader, calls = ArtifactCache(tmp_path / "a", shared=f"s3://{bucket}/ro", shared_options=options,
                                  shared_read_only=True), []
    entry = reader.get_or_build(NS, PARTS, _builder(calls))
    assert len(calls) == 1 and reader.verify(entry) and reader.shared.entries() == []


def test_publish_refused_keeps_the_local_entry(tmp_path, read_only_s3):
    """The probe passed but publishing is refused: one clear error; the entry stays local."""
    bucket, options = read_only_s3
    cache, calls = ArtifactCache(tmp_path / "a", shared=f"s3://{bucket}/lease", shared_options=options), []
    with pytest.raises(SharedCacheError) as e:
        cache.get_or_build(NS, PARTS, _builder(calls))
    entry = tmp_path / "a" / NS / KEY
    assert str(e.value).startswith(f"shared cache s3://{bucket}/lease: could not publish {NS}/{KEY} "
                                   "(AccessDenied)")
    assert str(e.value).endswith(f"nothing was lost locally: the entry stays in {entry}")
    assert cache.verify(entry) and cache.get_or_build(NS, PARTS, _builder(calls)) == entry
    assert len(calls) == 1


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0,
                    reason="root ignores directory permissions")
def test_read_only_directory_store(tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o555)
    try:
        with pytest.raises(SharedCacheError, match=rf"shared cache {shared} is not writable \(PermissionError\)"):
            ArtifactCache(tmp_path / "a", shared=str(shared))
        calls = []
        cache = ArtifactCache(tmp_path / "a", shared=str(shared), shared_read_only=True)
        assert cache.verify(cache.get_or_build(NS, PARTS, _builder(calls))) and len(calls) == 1
    finally:
        shared.chmod(0o755)


def test_unwritable_directory_store_message(tmp_path, monkeypatch):
    """The same check without relying on permissions (root ignores them): writes are refused."""
    from fsspec.implementations.local import LocalFileSystem

    def refuse(self, path, *a, **k):
        raise PermissionError(13, "Permission denied", path)

    monkeypatch.setattr(LocalFileSystem, "pipe_file", refuse)
    shared = tmp_path / "shared"
    with pytest.raises(SharedCacheError) as e:
        ArtifactCache(tmp_path / "a", shared=str(shared))
    assert str(e.value).startswith(f"shared cache {shared} is not writable (PermissionError): ")
    assert "\n" not in str(e.value)
    assert ArtifactCache(tmp_path / "a", shared=str(shared), shared_read_only=True).shared.read_only


# -- measure-only: forbid_build --------------------------------------------------------------


@pytest.mark.parametrize("shared", [False, True])
def test_forbid_build_raises_cache_miss(tmp_path, shared):
    store = (str(tmp_path / "shared"), {}) if shared else None
    cache = _cache(tmp_path, "a", store) if shared else ArtifactCache(tmp_path / "a")
    asked, calls = [], []

    def forbid(namespace, key_parts):
        asked.append((namespace, key_parts))
        return f"{namespace} {key_parts['model']} is not cached: train it first"

    cache.forbid_build = forbid
    with pytest.raises(CacheMiss, match="trained m is not cached: train it first"):
        cache.get_or_build(NS, PARTS, _builder(calls))
    assert asked == [(NS, PARTS)] and not calls and not (tmp_path / "a" / NS / KEY).exists()
    if shared:
        assert not cache.shared.fs.exists(cache.shared.lease_path(NS, KEY)), "no lease may be left"
        # Published by another machine: served, forbid_build is not consulted.
        _cache(tmp_path, "b", store).get_or_build(NS, PARTS, _builder(calls))
        assert cache.get_or_build(NS, PARTS, _builder(calls)) and len(calls) == 1 and len(asked) == 1
    cache.forbid_build = lambda namespace, key_parts: None  # no message: build
    cache.get_or_build(NS, {"other": 1}, _builder(calls))
    assert len(calls) == 1 + shared
