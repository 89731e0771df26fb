"""Artifact cache: atomic writes, verified reads, corrupt entries rebuilt, never served,
concurrent builders safe."""
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from squeezebench.cache import ArtifactCache, CacheCorrupt, atomic_write_bytes, content_key


def _builder(calls, payload=b"weights" * 100):
    def build(tmp):
        calls.append(tmp)
        (tmp / "model.bin").write_bytes(payload)
        return {"n": len(calls)}
    return build


def test_hit_after_build(tmp_path):
    cache, calls = ArtifactCache(tmp_path), []
    e1 = cache.get_or_build("ns", {"a": 1}, _builder(calls))
    e2 = cache.get_or_build("ns", {"a": 1}, _builder(calls))
    assert e1 == e2 and len(calls) == 1
    assert ArtifactCache.meta(e1) == {"n": 1}


@pytest.mark.parametrize("damage", ["truncate", "flip", "delete", "manifest"])
def test_corrupt_entry_is_rebuilt(tmp_path, damage):
    cache, calls = ArtifactCache(tmp_path), []
    entry = cache.get_or_build("ns", {"a": 1}, _builder(calls))
    f = entry / "model.bin"
    if damage == "truncate":
        f.write_bytes(f.read_bytes()[:10])
    elif damage == "flip":
        b = bytearray(f.read_bytes()); b[3] ^= 0xFF; f.write_bytes(bytes(b))
    elif damage == "delete":
        f.unlink()
    else:
        (entry / "MANIFEST.json").write_text("{not json")
    with pytest.raises(CacheCorrupt):
        cache.verify(entry)
    again = cache.get_or_build("ns", {"a": 1}, _builder(calls))
    assert len(calls) == 2, "a corrupt entry must be rebuilt"
    assert (again / "model.bin").read_bytes() == b"weights" * 100
    cache.verify(again)


def test_failed_build_leaves_nothing(tmp_path):
    cache = ArtifactCache(tmp_path)

    def boom(tmp):
        (tmp / "half").write_bytes(b"x")
        raise RuntimeError("killed mid-build")

    with pytest.raises(RuntimeError):
        cache.get_or_build("ns", {"a": 2}, boom)
    left = [p.name for p in (tmp_path / "ns").iterdir()]
    assert not left, f"no temp or partial entry may remain: {left}"
    assert cache.lookup("ns", content_key({"a": 2})) is None


def test_keys_differ_for_any_change():
    assert content_key({"a": 1, "b": [1, 2]}) == content_key({"b": [1, 2], "a": 1})
    assert content_key({"a": 1}) != content_key({"a": 2})


def test_atomic_write_replaces_whole_file(tmp_path):
    p = tmp_path / "x.json"
    atomic_write_bytes(p, json.dumps({"v": 1}).encode())
    atomic_write_bytes(p, json.dumps({"v": 2}).encode())
    assert json.loads(p.read_text()) == {"v": 2}
    assert [q.name for q in tmp_path.iterdir()] == ["x.json"]


_RACER = textwrap.dedent("""
    import os, sys, time
    from pathlib import Path
    from squeezebench.cache import ArtifactCache

    root, log, go = Path(sys.argv[1]), Path(sys.argv[2]), float(sys.argv[3])
    while time.time() < go:  # both processes ask for the entry at the same moment
        time.sleep(0.001)

    def build(tmp):
        with open(log, "a") as f:
            f.write(f"{os.getpid()}\\n")
        time.sleep(1.0)  # a slow build (training): the other process arrives meanwhile
        (tmp / "model.bin").write_bytes(b"trained by %d" % os.getpid())
        return {"pid": os.getpid()}

    entry = ArtifactCache(root).get_or_build("trained", {"model": "m"}, build)
    print(entry, (entry / "model.bin").read_bytes().decode())
""")


def test_two_processes_build_one_entry_once(tmp_path):
    """Two real processes want the same entry: one builds, the other waits and reads it."""
    script, log = tmp_path / "racer.py", tmp_path / "builds.log"
    script.write_text(_RACER)
    go = time.time() + 2.0
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    procs = [subprocess.Popen([sys.executable, str(script), str(tmp_path / "cache"), str(log), str(go)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
             for _ in range(2)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    builders = log.read_text().split()
    assert len(builders) == 1, f"the entry was built {len(builders)} times (pids {builders})"
    lines = {o.strip() for o, _ in outs}
    assert len(lines) == 1, f"the processes read different entries: {lines}"
    assert lines.pop().endswith(f"trained by {builders[0]}")
    assert len(list((tmp_path / "cache" / "trained").iterdir())) == 1


def test_lookup_leaves_a_corrupt_entry_to_the_lock_holder(tmp_path):
    cache, calls = ArtifactCache(tmp_path), []
    entry = cache.get_or_build("ns", {"a": 3}, _builder(calls))
    (entry / "model.bin").write_bytes(b"x")
    key = content_key({"a": 3})
    assert cache.lookup("ns", key) is None and entry.exists(), "an unlocked reader must not delete"
    assert cache.lookup("ns", key, remove_corrupt=True) is None and not entry.exists()
