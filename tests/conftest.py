"""Shared test helpers: a tiny synthetic dataset and a Workbench around it (no real data needed)."""
from __future__ import annotations

import pytest
import torch

from squeezebench.data import Dataset
from squeezebench.settings import resolve_settings
from squeezebench.workbench import Workbench

pytest_plugins = ["pytester"]  # plugin tests run pytest in temporary projects


def make_tiny_dataset(name: str = "tiny", channels: int = 1, size: int = 16, n_train: int = 256,
                      n_test: int = 128, classes: int = 4, seed: int = 0) -> Dataset:
    """Separable synthetic images: class k has a bright square in quadrant k (learnable in 1-2 epochs)."""
    g = torch.Generator().manual_seed(seed)

    def split(n: int):
        y = torch.randint(0, classes, (n,), generator=g)
        x = torch.randint(0, 60, (n, channels, size, size), generator=g, dtype=torch.int64)
        h = size // 2
        for k in range(classes):
            r, c = divmod(k % 4, 2)
            x[y == k, :, r * h:(r + 1) * h, c * h:(c + 1) * h] += 150
        return x.clamp(0, 255).to(torch.uint8), y

    xtr, ytr = split(n_train)
    xte, yte = split(n_test)
    return Dataset(name, [f"c{k}" for k in range(classes)], xtr, ytr, xte, yte, source="synthetic")


@pytest.fixture
def tiny_dataset() -> Dataset:
    return make_tiny_dataset()


def new_tiny_workbench(root, dataset: Dataset | None = None) -> Workbench:
    """A one-thread Workbench caching under ``root`` with the tiny dataset registered as ``tiny``."""
    torch.set_num_threads(1)
    wb = Workbench(resolve_settings(data_dir=root / "data", cache_dir=root / "cache", threads=1))
    wb._datasets["tiny"] = dataset if dataset is not None else make_tiny_dataset()
    return wb


@pytest.fixture
def tiny_workbench(tmp_path, tiny_dataset) -> Workbench:
    """A Workbench with the tiny dataset registered under the name ``tiny``, caching in tmp_path."""
    return new_tiny_workbench(tmp_path, tiny_dataset)


@pytest.fixture(scope="session")
def shared_data(pytestconfig):
    """The real datasets (../shared/data here). Skipped with the reason when absent, except in CI."""
    import os

    s = resolve_settings(data_dir=pytestconfig.getoption("sb_data_dir"), environ=os.environ)
    if not (s.data_dir / "MNIST").is_dir() or not (s.data_dir / "cifar10").exists():
        msg = (f"real datasets not found under {s.data_dir}; set SQUEEZEBENCH_DATA_DIR or "
               "--sb-data-dir (here: ../shared/data)")
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)
    return s.data_dir


def run_bench(*args: str, tmp_path, pythonpath=None, timeout: int = 300):
    """``pytest bench/ -q ARGS`` of this repo in a subprocess, caching under ``tmp_path``, with
    ``pythonpath`` (a user's modules) importable: (the CompletedProcess, stdout + stderr)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    env = {k: v for k, v in os.environ.items() if k != "SQUEEZEBENCH_PROFILE"}
    env["SQUEEZEBENCH_CACHE_DIR"] = str(Path(tmp_path) / "cache")
    if pythonpath is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(pythonpath), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    r = subprocess.run([sys.executable, "-m", "pytest", "bench/", "-q", "-p", "no:cacheprovider", *args],
                       cwd=Path(__file__).resolve().parents[1], env=env, capture_output=True, text=True,
                       timeout=timeout)
    return r, r.stdout + r.stderr
