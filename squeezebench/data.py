"""Datasets as in-memory uint8 tensors, loaded through torchvision.

Accepted layouts (``root`` is the data directory):

* MNIST: torchvision's ``root/MNIST/raw/*-ubyte`` (downloaded into the default data dir).
* CIFAR-10: torchvision's python batches ``root/cifar-10-batches-py/`` or an image-folder
  tree ``root/cifar10/{train,test}/<class>/*.png|jpg``.
* Any image folder ``<path>/{train,test}/<class>/*``, named as ``folder:<path>``.

Decoded image folders are cached (as .npy, verified) in the cache directory, never in the
data directory.
"""
from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from squeezebench.cache import ArtifactCache
from squeezebench.keys import producer_versions

log = logging.getLogger(__name__)

IMG_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp")


class DataError(Exception):
    """A dataset is missing or unreadable. The message says where and how to fix it."""


@dataclass
class Dataset:
    name: str
    classes: list[str]
    x_train: torch.Tensor  # uint8 (N, C, H, W)
    y_train: torch.Tensor  # int64 (N,)
    x_test: torch.Tensor
    y_test: torch.Tensor
    source: str  # where and in which layout it was read
    mean: tuple[float, ...] = field(init=False)
    std: tuple[float, ...] = field(init=False)
    fingerprint: str = field(init=False)

    def __post_init__(self) -> None:
        for split, x, y in (("train", self.x_train, self.y_train), ("test", self.x_test, self.y_test)):
            if x.dtype != torch.uint8 or x.ndim != 4:
                raise DataError(f"{self.name} {split}: expected uint8 NCHW images, got {x.dtype} {tuple(x.shape)}")
            if len(x) != len(y) or len(x) == 0:
                raise DataError(f"{self.name} {split}: {len(x)} images but {len(y)} labels")
        if self.x_train.shape[1:] != self.x_test.shape[1:]:
            raise DataError(f"{self.name}: train images {tuple(self.x_train.shape[1:])} "
                            f"differ from test images {tuple(self.x_test.shape[1:])}")
        # Per-channel statistics in float64 chunks: exact enough, and no full float copy.
        c = self.x_train.shape[1]
        s1 = torch.zeros(c, dtype=torch.float64)
        s2 = torch.zeros(c, dtype=torch.float64)
        for chunk in self.x_train.split(8192):
            f = chunk.to(torch.float64).div_(255)
            s1 += f.sum(dim=(0, 2, 3))
            s2 += f.square_().sum(dim=(0, 2, 3))
        n = self.x_train.numel() / c
        mean = s1 / n
        var = (s2 / n - mean.square()).clamp_min(0) * n / max(n - 1, 1)
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(max(float(v) ** 0.5, 1e-6) for v in var)
        h = hashlib.sha256()
        for t in (self.x_train, self.y_train, self.x_test, self.y_test):
            h.update(t.numpy().tobytes())
        self.fingerprint = h.hexdigest()[:16]

    @property
    def in_shape(self) -> tuple[int, int, int]:
        return tuple(self.x_train.shape[1:])  # type: ignore[return-value]

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 images -> float32 inputs, scaled to [0, 1] and standardised per channel."""
        mean = torch.tensor(self.mean).view(1, -1, 1, 1)
        std = torch.tensor(self.std).view(1, -1, 1, 1)
        return (x.float() / 255 - mean) / std

    def test_inputs(self) -> torch.Tensor:
        return self.normalize(self.x_test)


_LOADERS: dict[str, Callable[[Path, ArtifactCache, bool], Dataset]] = {}


def register_dataset(name: str):
    def deco(fn):
        _LOADERS[name] = fn
        return fn
    return deco


def list_datasets() -> list[str]:
    return sorted(_LOADERS) + ["folder:<path>"]


def load_dataset(name: str, data_dir: Path, cache_dir: Path, download: bool = False) -> Dataset:
    """Load ``name`` (``mnist``, ``cifar10`` or ``folder:<path>``) or raise :class:`DataError`."""
    cache = ArtifactCache(cache_dir)
    if name.startswith("folder:"):
        path = Path(name.split(":", 1)[1]).expanduser()
        return _load_image_folder_dataset(path.name or "folder", path, cache)
    if name not in _LOADERS:
        raise DataError(f"unknown dataset {name!r}; known: {', '.join(list_datasets())}")
    return _LOADERS[name](Path(data_dir), cache, download)


def _torch_u8(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(images))
    if t.ndim == 3:  # N, H, W (grayscale)
        t = t.unsqueeze(1)
    elif t.ndim == 4 and t.shape[-1] in (1, 3):  # N, H, W, C
        t = t.permute(0, 3, 1, 2)
    return t.contiguous().to(torch.uint8)


@register_dataset("mnist")
def _load_mnist(root: Path, cache: ArtifactCache, download: bool) -> Dataset:
    from torchvision.datasets import MNIST

    raw = root / "MNIST" / "raw"
    how = (
        f"MNIST is read from {raw}/ as the four idx files of torchvision's layout "
        "(train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte, "
        "t10k-labels-idx1-ubyte, optionally .gz). Get them with "
        "torchvision.datasets.MNIST(root, download=True) on a machine with internet, "
        "or point --sb-data-dir / SQUEEZEBENCH_DATA_DIR at a directory that has them."
    )
    try:
        if download:
            root.mkdir(parents=True, exist_ok=True)
        splits = [MNIST(str(root), train=t, download=download) for t in (True, False)]
    except Exception as e:  # torchvision raises RuntimeError, URLError, ValueError, ...
        raise DataError(f"cannot read MNIST under {root}: {_oneline(e)}. {how}") from None
    xs = [_torch_u8(s.data) for s in splits]
    ys = [torch.as_tensor(s.targets, dtype=torch.int64) for s in splits]
    if xs[0].shape[1:] != (1, 28, 28) or len(xs[1]) == 0:
        raise DataError(f"MNIST under {raw} has images of shape {tuple(xs[0].shape[1:])}, "
                        f"expected 1x28x28. {how}")
    return Dataset("mnist", [str(i) for i in range(10)], xs[0], ys[0], xs[1], ys[1],
                   source=f"{raw} (torchvision MNIST idx files)")


@register_dataset("cifar10")
def _load_cifar10(root: Path, cache: ArtifactCache, download: bool) -> Dataset:
    how = (
        "CIFAR-10 is accepted as torchvision's python batches (<data-dir>/cifar-10-batches-py/) "
        "or as an image-folder tree (<data-dir>/cifar10/{train,test}/<class>/*.png|jpg). "
        "Get the batches with torchvision.datasets.CIFAR10(root, download=True) on a machine "
        "with internet, or point --sb-data-dir / SQUEEZEBENCH_DATA_DIR at a directory that has one."
    )
    folder = root / "cifar10"
    if (folder / "train").is_dir() or (folder / "test").is_dir():
        return _load_image_folder_dataset("cifar10", folder, cache, how=how)
    from torchvision.datasets import CIFAR10

    try:
        if download:
            root.mkdir(parents=True, exist_ok=True)
        splits = [CIFAR10(str(root), train=t, download=download) for t in (True, False)]
    except Exception as e:
        raise DataError(f"cannot read CIFAR-10 under {root}: {_oneline(e)}. {how}") from None
    xs = [_torch_u8(s.data) for s in splits]
    ys = [torch.as_tensor(s.targets, dtype=torch.int64) for s in splits]
    return Dataset("cifar10", list(splits[0].classes), xs[0], ys[0], xs[1], ys[1],
                   source=f"{root / 'cifar-10-batches-py'} (torchvision python batches)")


def _load_image_folder_dataset(name: str, path: Path, cache: ArtifactCache, how: str = "") -> Dataset:
    how = how or ("An image-folder dataset is <path>/{train,test}/<class>/<image>, the same class "
                  "folders in both splits, any image size (resized to the first image's size), "
                  "grayscale or RGB.")
    splits = {}
    listing = []
    for split in ("train", "test"):
        d = path / split
        if not d.is_dir():
            raise DataError(f"dataset {name!r}: missing folder {d}. {how}")
        classes = sorted(e.name for e in os.scandir(d) if e.is_dir())
        files: list[tuple[int, Path]] = []
        for ci, c in enumerate(classes):
            entries = sorted((e for e in os.scandir(d / c) if e.name.lower().endswith(IMG_EXTENSIONS)),
                             key=lambda e: e.name)
            for e in entries:
                st = e.stat()
                files.append((ci, Path(e.path)))
                listing.append((f"{split}/{c}/{e.name}", st.st_size, st.st_mtime_ns))
        if not files:
            raise DataError(f"dataset {name!r}: no images under {d}/<class>/. {how}")
        splits[split] = (classes, files)
    if splits["train"][0] != splits["test"][0]:
        raise DataError(f"dataset {name!r}: class folders differ between {path/'train'} and "
                        f"{path/'test'}. {how}")

    def build(tmp: Path) -> dict:
        first = _open_image(splits["train"][1][0][1], None, None, how)
        mode = "L" if first.mode in ("L", "1", "I", "I;16", "F") else "RGB"
        size = first.size
        for split, (_, files) in splits.items():
            arr = np.stack([np.asarray(_open_image(f, mode, size, how)) for _, f in files])
            np.save(tmp / f"x_{split}.npy", arr)
            np.save(tmp / f"y_{split}.npy", np.array([ci for ci, _ in files], dtype=np.int64))
        return {"mode": mode, "size": list(size)}

    entry = cache.get_or_build("datasets", {"kind": "image-folder", "root": str(path.resolve()),
                                            "listing": listing, "v": 1,
                                            # Pillow's decoders compute the pixels (JPEG decoding
                                            # can change between libjpeg versions).
                                            "versions": producer_versions(("pillow", "numpy"))}, build)
    arrs = {k: np.load(entry / f"{k}.npy", allow_pickle=False)
            for k in ("x_train", "y_train", "x_test", "y_test")}
    return Dataset(name, splits["train"][0], _torch_u8(arrs["x_train"]), torch.from_numpy(arrs["y_train"]),
                   _torch_u8(arrs["x_test"]), torch.from_numpy(arrs["y_test"]),
                   source=f"{path} (image folder)")


def _open_image(path: Path, mode: str | None, size: tuple[int, int] | None, how: str):
    from PIL import Image

    try:
        with Image.open(path) as im:
            im.load()
            if mode is not None and im.mode != mode:
                im = im.convert(mode)
            if size is not None and im.size != size:
                im = im.resize(size, Image.BILINEAR)
            return im.copy() if mode is None else im
    except Exception as e:
        raise DataError(f"cannot decode image {path}: {_oneline(e)}. {how}") from None


def _oneline(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}"
