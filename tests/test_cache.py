"""Artifact cache: atomic writes, verified reads, corrupt entries rebuilt, never served."""
import json

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
    assert not any((tmp_path / "ns").iterdir()), "no temp or partial entry may remain"
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
