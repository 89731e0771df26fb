"""Datasets as in-memory uint8 tensors, loaded through torchvision.

Accepted layouts (``root`` is the data directory):

* MNIST: torchvision's ``root/MNIST/raw/*-ubyte`` (downloaded into the default data dir).
* CIFAR-10: torchvision's python batches ``root/cifar-10-batches-py/`` or an image-folder
  tree ``root/cifar10/{train,test}/<class>/*.png|jpg``.
* Any image folder ``<path>/{train,test}/<class>/*``, named as ``folder:<path>``.
* A Python callable, named as ``package.module:callable`` (see :data:`CALLABLE_FORMS`): the
  user's own loader, called with no arguments; its arrays are converted here, never saved.

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
from torch.utils.data import Dataset as TorchDataset

from squeezebench.cache import ArtifactCache
from squeezebench.keys import producer_versions
from squeezebench.userspec import SpecError, import_callable

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
# A dataset's facts, beside its loader: ``difficulty`` ("easy": a small network has capacity to
# spare, so compression defaults allow small drops; anything else, and any dataset that says
# nothing, gets the generous defaults of a hard one). A user's [tool.squeezebench] overrides
# the drops these lead to.
DATASET_FACTS: dict[str, dict] = {}


def register_dataset(name: str, **facts):
    def deco(fn):
        _LOADERS[name] = fn
        DATASET_FACTS[name] = dict(facts)
        return fn
    return deco


def dataset_fact(name: str, key: str, default=None):
    """What dataset ``name`` declares about itself (``default`` for user datasets)."""
    return DATASET_FACTS.get(name, {}).get(key, default)


def list_datasets() -> list[str]:
    return sorted(_LOADERS) + ["folder:<path>", "package.module:callable"]


def check_dataset_spec(name: str) -> None:
    """Raise :class:`DataError` unless ``name`` is a known dataset, ``folder:<path>`` with a path,
    or a ``package.module:callable`` that imports and is callable. Reads no data, calls nothing."""
    if name.startswith("folder:"):
        if not name.split(":", 1)[1].strip():
            raise DataError(f"dataset {name!r} names no folder; use folder:/path/to/images "
                            "(<path>/{train,test}/<class>/*)")
        return
    if ":" in name:
        try:
            import_callable(name)
        except SpecError as e:
            raise DataError(f"dataset {name!r}: {e}. {CALLABLE_FORMS}") from None
        return
    if name not in _LOADERS:
        raise DataError(f"unknown dataset {name!r}; known: {', '.join(list_datasets())}")


def load_dataset(name: str, data_dir: Path, cache_dir: Path, download: bool = False) -> Dataset:
    """Load ``name`` (``mnist``, ``cifar10``, ``folder:<path>`` or ``package.module:callable``)
    or raise :class:`DataError`."""
    cache = ArtifactCache(cache_dir)
    if name.startswith("folder:"):
        path = Path(name.split(":", 1)[1]).expanduser()
        return _load_image_folder_dataset(path.name or "folder", path, cache)
    if ":" in name:
        return load_callable_dataset(name)
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


@register_dataset("mnist", difficulty="easy")
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


@register_dataset("cifar10", difficulty="hard")
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


# -- package.module:callable ------------------------------------------------------------------
CALLABLE_FORMS = (
    "A dataset callable takes no arguments and returns (x_train, y_train, x_test, y_test) as "
    "tensors or numpy arrays, or (train_dataset, test_dataset) torch Datasets of (image, label) "
    "items, optionally followed by the list of class names; images uint8 0-255 or float in [0, 1] "
    "(not normalised), shaped N x C x H x W, N x H x W x C (C = 1 or 3) or N x H x W; labels "
    "integer class indices 0..K-1")


def _is_class_list(obj: object) -> bool:
    return isinstance(obj, (list, tuple)) and bool(obj) and all(isinstance(c, str) for c in obj)


def _is_item_dataset(obj: object) -> bool:
    if isinstance(obj, TorchDataset):
        return True
    return (hasattr(obj, "__getitem__") and hasattr(obj, "__len__")
            and not isinstance(obj, (torch.Tensor, np.ndarray, list, tuple, str, bytes, dict)))


def _as_tensor(x: object) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu()
    return torch.as_tensor(np.asarray(x))


def _from_item_dataset(ds, split: str, fail) -> tuple[torch.Tensor, torch.Tensor]:
    n = len(ds)
    if n == 0:
        raise fail(f"the {split} dataset is empty")
    images, labels = [], []
    for i in range(n):
        item = ds[i]
        if not isinstance(item, (tuple, list)) or len(item) < 2:
            raise fail(f"{split} dataset item {i} is a {type(item).__name__}, not an (image, label) pair")
        try:
            img, lab = _as_tensor(item[0]), _as_tensor(item[1])
        except Exception as e:
            raise fail(f"{split} dataset item {i} is not an (image, label) of numbers ({_oneline(e)})") from None
        if images and img.shape != images[0].shape:
            raise fail(f"{split} dataset images differ in shape: item 0 is {tuple(images[0].shape)}, item {i} is "
                       f"{tuple(img.shape)}; resize them to one size in the dataset's transform")
        if labels and lab.shape != labels[0].shape:
            raise fail(f"{split} dataset labels differ in shape (item {i}: {tuple(lab.shape)})")
        images.append(img)
        labels.append(lab)
    return torch.stack(images), torch.stack(labels)


def _callable_images(x: object, what: str, fail, notes: list[str]) -> torch.Tensor:
    try:
        t = _as_tensor(x)
    except Exception as e:
        raise fail(f"{what} is a {type(x).__name__} that is not an array of numbers ({_oneline(e)})") from None
    if t.ndim == 3:  # N, H, W (grayscale)
        t = t.unsqueeze(1)
    elif t.ndim == 4 and t.shape[-1] in (1, 3) and t.shape[1] not in (1, 3):  # N, H, W, C
        t = t.permute(0, 3, 1, 2)
    if t.ndim != 4:
        raise fail(f"{what} has shape {tuple(t.shape)}; images must be N x C x H x W, N x H x W x C or N x H x W")
    if t.dtype == torch.bool or t.is_complex():
        raise fail(f"{what} has dtype {t.dtype}")
    if t.is_floating_point():
        if not bool(torch.isfinite(t).all()):
            raise fail(f"{what} holds NaN or inf")
        lo, hi = float(t.min()), float(t.max())
        if lo < 0 or hi > 1:
            raise fail(f"{what} is {t.dtype} with values in [{lo:.4g}, {hi:.4g}]; float images must lie in "
                       "[0, 1], not normalised (the engine standardises per channel itself): divide "
                       "0-255 values by 255 or pass them as uint8")
        t = (t.double() * 255).round().to(torch.uint8)
        note = "float images in [0, 1] scaled to uint8 (x*255, rounded)"
        if note not in notes:
            notes.append(note)
    elif t.dtype != torch.uint8:
        lo, hi = int(t.min()), int(t.max())
        if lo < 0 or hi > 255:
            raise fail(f"{what} is {t.dtype} with values in [{lo}, {hi}]; integer images must lie in 0-255")
        t = t.to(torch.uint8)
    return t.contiguous()


def _callable_labels(y: object, what: str, fail) -> torch.Tensor:
    try:
        t = _as_tensor(y)
    except Exception as e:
        raise fail(f"{what} is not an array of integer class indices ({_oneline(e)}); map class names "
                   "to 0..K-1 and return the names as the last element") from None
    if t.ndim == 2 and t.shape[1] > 1:
        raise fail(f"{what} has shape {tuple(t.shape)} (one-hot or scores?); labels must be class "
                   "indices: pass y.argmax(1)")
    if t.ndim == 2 and t.shape[1] == 1:
        t = t[:, 0]
    if t.ndim != 1:
        raise fail(f"{what} has shape {tuple(t.shape)}; labels must be a 1-D sequence of class indices")
    if t.is_floating_point():
        if not bool((t == t.round()).all()):
            bad = t[t != t.round()][0].item()
            raise fail(f"{what} holds non-integer values (e.g. {bad:g}); labels must be integer class indices")
    elif t.is_complex():
        raise fail(f"{what} has dtype {t.dtype}; labels must be integer class indices")
    t = t.to(torch.int64)
    if len(t) and int(t.min()) < 0:
        raise fail(f"{what} has negative labels (min {int(t.min())}); labels are class indices 0..K-1")
    return t


def load_callable_dataset(spec: str) -> Dataset:
    """The dataset the user's ``package.module:callable`` returns (see :data:`CALLABLE_FORMS`),
    converted to uint8 NCHW images and int64 labels, or one :class:`DataError` naming the callable,
    the problem and the accepted forms. Nothing is written anywhere."""

    def fail(problem: str) -> DataError:
        return DataError(f"dataset {spec!r}: {problem}. {CALLABLE_FORMS}")

    try:
        fn, source = import_callable(spec)
    except SpecError as e:
        raise fail(str(e)) from None
    try:
        result = fn()
    except Exception as e:
        raise DataError(f"dataset {spec!r}: calling {spec}() raised {_oneline(e)}") from None
    if not isinstance(result, (tuple, list)):
        raise fail(f"{spec}() returned a {type(result).__name__}")
    parts = list(result)
    classes: list[str] | None = None
    if len(parts) in (3, 5) and _is_class_list(parts[-1]):
        classes = [str(c) for c in parts.pop()]
    if len(parts) == 2 and all(_is_item_dataset(p) for p in parts):
        if classes is None and _is_class_list(getattr(parts[0], "classes", None)):
            classes = [str(c) for c in parts[0].classes]
        (x_tr, y_tr), (x_te, y_te) = (_from_item_dataset(d, s, fail) for d, s in zip(parts, ("train", "test")))
        names = ("train dataset images", "train dataset labels", "test dataset images", "test dataset labels")
    elif len(parts) == 4:
        x_tr, y_tr, x_te, y_te = parts
        names = ("x_train", "y_train", "x_test", "y_test")
    else:
        raise fail(f"{spec}() returned a {type(result).__name__} of {len(result)} elements")
    notes: list[str] = []
    x_tr, x_te = (_callable_images(x, n, fail, notes) for x, n in ((x_tr, names[0]), (x_te, names[2])))
    y_tr, y_te = (_callable_labels(y, n, fail) for y, n in ((y_tr, names[1]), (y_te, names[3])))
    for x, y, nx, ny in ((x_tr, y_tr, names[0], names[1]), (x_te, y_te, names[2], names[3])):
        if len(x) == 0:
            raise fail(f"{nx} is empty")
        if len(x) != len(y):
            raise fail(f"{nx} has {len(x)} images but {ny} has {len(y)} labels")
    if x_tr.shape[1:] != x_te.shape[1:]:
        raise fail(f"train images are {tuple(x_tr.shape[1:])} but test images {tuple(x_te.shape[1:])} (C, H, W)")
    top_train, top_test = int(y_tr.max()), int(y_te.max())
    if classes is not None:
        if max(top_train, top_test) >= len(classes):
            raise fail(f"labels go up to {max(top_train, top_test)} but {len(classes)} class names were given")
    else:
        if top_test > top_train:
            raise fail(f"{names[3]} has label {top_test}, which {names[1]} never has (its labels go up to "
                       f"{top_train}); labels must be the same class indices 0..K-1 in both splits")
        classes = [str(k) for k in range(top_train + 1)]
    if len(classes) < 2:
        raise fail(f"only {len(classes)} class; a classification dataset needs at least 2")
    where = f"{source}" if source else "no source file"
    return Dataset(spec, classes, x_tr, y_tr, x_te, y_te,
                   source=f"{spec} (python callable in {where}" + "".join(f"; {n}" for n in notes) + ")")


def _oneline(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}"
