"""Datasets: real copies load, bad input gives one clear error, data dirs are never written."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from squeezebench.data import DataError, load_dataset
from squeezebench.settings import resolve_settings

ROOT = Path(__file__).resolve().parents[1]


def _tree_state(root: Path) -> dict:
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*")}


def _write_folder(root: Path, mode: str, size=(20, 20), per_class=3, classes=("a", "b", "c")):
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for ci, c in enumerate(classes):
            d = root / split / c
            d.mkdir(parents=True)
            for i in range(per_class):
                shape = (size[1], size[0]) if mode == "L" else (size[1], size[0], 3)
                arr = rng.integers(0, 255, shape, dtype=np.uint8)
                Image.fromarray(arr, mode).save(d / f"{i}.png")


@pytest.mark.parametrize("mode,channels", [("L", 1), ("RGB", 3)])
def test_image_folder_any_class_count(tmp_path, mode, channels):
    _write_folder(tmp_path / "imgs", mode)
    before = _tree_state(tmp_path / "imgs")
    ds = load_dataset(f"folder:{tmp_path / 'imgs'}", tmp_path / "unused", tmp_path / "cache")
    assert ds.classes == ["a", "b", "c"] and ds.num_classes == 3
    assert ds.in_shape == (channels, 20, 20)
    assert len(ds.x_train) == 9 and sorted(set(ds.y_train.tolist())) == [0, 1, 2]
    assert _tree_state(tmp_path / "imgs") == before, "the data directory must not be written"
    again = load_dataset(f"folder:{tmp_path / 'imgs'}", tmp_path / "unused", tmp_path / "cache")
    assert again.fingerprint == ds.fingerprint


def test_image_folder_resizes_to_first_image(tmp_path):
    _write_folder(tmp_path / "imgs", "RGB")
    Image.fromarray(np.zeros((30, 25, 3), np.uint8)).save(tmp_path / "imgs/test/a/odd.png")
    ds = load_dataset(f"folder:{tmp_path / 'imgs'}", tmp_path, tmp_path / "cache")
    assert ds.x_test.shape[1:] == (3, 20, 20)


def test_corrupt_image_names_the_file(tmp_path):
    _write_folder(tmp_path / "imgs", "RGB")
    (tmp_path / "imgs/train/b/1.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match=r"train/b/1\.png"):
        load_dataset(f"folder:{tmp_path / 'imgs'}", tmp_path, tmp_path / "cache")


@pytest.mark.parametrize("name", ["mnist", "cifar10"])
def test_missing_root_says_where_and_how(tmp_path, name):
    with pytest.raises(DataError) as e:
        load_dataset(name, tmp_path / "nowhere", tmp_path / "cache", download=False)
    msg = str(e.value)
    assert str(tmp_path / "nowhere") in msg
    assert "SQUEEZEBENCH_DATA_DIR" in msg and "download=True" in msg
    assert not (tmp_path / "nowhere").exists(), "nothing may be created in a named data dir"


def test_missing_split_folder(tmp_path):
    (tmp_path / "imgs/train/a").mkdir(parents=True)
    Image.fromarray(np.zeros((20, 20), np.uint8)).save(tmp_path / "imgs/train/a/0.png")
    with pytest.raises(DataError, match="missing folder .*test"):
        load_dataset(f"folder:{tmp_path / 'imgs'}", tmp_path, tmp_path / "cache")


def test_truncated_mnist_file(tmp_path, shared_data):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for f in (shared_data / "MNIST" / "raw").glob("*-ubyte"):
        shutil.copy(f, raw / f.name)
    t = raw / "t10k-images-idx3-ubyte"
    t.write_bytes(t.read_bytes()[:5000])
    with pytest.raises(DataError, match="cannot read MNIST"):
        load_dataset("mnist", tmp_path, tmp_path / "cache")


def test_real_datasets_load_without_writing(shared_data, tmp_path):
    before = _tree_state(shared_data)
    m = load_dataset("mnist", shared_data, tmp_path / "cache")
    assert m.in_shape == (1, 28, 28) and len(m.x_train) == 60000 and len(m.x_test) == 10000
    c = load_dataset("cifar10", shared_data, tmp_path / "cache")
    assert c.in_shape == (3, 32, 32) and len(c.x_train) == 50000 and len(c.x_test) == 10000
    assert c.classes[:2] == ["airplane", "automobile"] and c.num_classes == 10
    assert _tree_state(shared_data) == before


def test_settings_resolution_order(tmp_path):
    env = {"SQUEEZEBENCH_DATA_DIR": str(tmp_path / "env"), "SQUEEZEBENCH_CACHE_DIR": str(tmp_path / "c")}
    s = resolve_settings(environ=env)
    assert s.data_dir == tmp_path / "env" and not s.download
    s = resolve_settings(data_dir=tmp_path / "opt", environ=env)
    assert s.data_dir == tmp_path / "opt"
    s = resolve_settings(environ={"SQUEEZEBENCH_CACHE_DIR": str(tmp_path / "c")})
    assert s.data_dir == tmp_path / "c" / "data" and s.download, "only the default dir downloads"
    with pytest.raises(ValueError):
        resolve_settings(threads=0, environ={})


def test_bench_with_missing_data_is_one_clear_error(tmp_path):
    """The command a user runs: no traceback, the path and the fix in the message."""
    env = {**os.environ, "SQUEEZEBENCH_CACHE_DIR": str(tmp_path / "cache")}
    r = subprocess.run(
        [sys.executable, "-m", "pytest", "bench/", "-q", "-p", "no:cacheprovider", "--sb-profile", "quick",
         "--sb-data-dir", str(tmp_path / "nowhere"), "--sb-backends", "torch-cpu", "--sb-batches", "1",
         "--benchmark-disable"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )
    out = r.stdout + r.stderr
    assert r.returncode == 4, out
    assert f"cannot read MNIST under {tmp_path / 'nowhere'}" in out
    assert "Traceback" not in out
