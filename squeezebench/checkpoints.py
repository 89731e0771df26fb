"""User checkpoints: a model's trained weights, loaded instead of training it
(``--sb-checkpoint MODEL=PATH``; :meth:`squeezebench.workbench.Workbench.train`).

Accepted: a state_dict saved with ``torch.save(model.state_dict(), "m.pt")`` (read with
``torch.load(weights_only=True)``: no pickled code runs; a dict holding it under ``state_dict``,
``model_state_dict`` or ``model`` works too), or a ``.safetensors`` file when safetensors is
installed. Its keys and shapes must be exactly those of the model built for the dataset;
otherwise :class:`CheckpointError` names the file, the missing and unexpected keys and the shape
mismatches. The file's sha256 is part of the cache key of everything built from it.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import torch
from torch import nn

from squeezebench.userspec import oneline

SAFETENSORS_SUFFIX = ".safetensors"
SHOW = 5  # keys listed per kind of mismatch


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or does not fit its model; the message names the file."""


_DIGESTS: dict[tuple[str, int, int], str] = {}


def sha256_of(path: Path) -> str:
    """The file's sha256 (memoised per path, size and mtime)."""
    st = path.stat()
    k = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if k not in _DIGESTS:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        _DIGESTS[k] = h.hexdigest()
    return _DIGESTS[k]


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    how = ("save the weights with torch.save(model.state_dict(), path) (.pt) or safetensors' "
           "save_file(model.state_dict(), path) (.safetensors)")
    if path.suffix.lower() == SAFETENSORS_SUFFIX:
        try:
            from safetensors.torch import load_file
        except ImportError:
            raise CheckpointError(f"checkpoint {path}: reading .safetensors needs the safetensors "
                                  "package (pip install safetensors), or save a .pt state_dict") from None
        try:
            return load_file(str(path), device="cpu")
        except Exception as e:
            raise CheckpointError(f"cannot read checkpoint {path} ({oneline(e)}); {how}") from None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointError(f"cannot read checkpoint {path} with torch.load(weights_only=True) "
                              f"({oneline(e)}); {how} (a pickled whole model is not loaded)") from None
    if isinstance(obj, dict) and not any(isinstance(v, torch.Tensor) for v in obj.values()):
        for wrapper in ("state_dict", "model_state_dict", "model"):
            if isinstance(obj.get(wrapper), dict):
                obj = obj[wrapper]
                break
    if not isinstance(obj, dict) or not obj or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()):
        raise CheckpointError(f"checkpoint {path} holds a {type(obj).__name__}, not a state_dict "
                              f"(parameter name -> tensor); {how}")
    return obj


def _listed(keys: list[str]) -> str:
    more = f" (+{len(keys) - SHOW} more)" if len(keys) > SHOW else ""
    return ", ".join(keys[:SHOW]) + more


def load_into(model: nn.Module, path: Path, model_name: str, in_shape: tuple, num_classes: int) -> None:
    """Load the checkpoint at ``path`` into ``model`` (built as ``model_name`` for ``in_shape``
    and ``num_classes``), strictly, or raise one :class:`CheckpointError` saying what differs."""
    state = read_state_dict(path)
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [f"{k} {tuple(state[k].shape)} in the file, {tuple(v.shape)} in the model"
              for k, v in expected.items() if k in state and tuple(state[k].shape) != tuple(v.shape)]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"missing keys: {_listed(missing)}")
        if unexpected:
            parts.append(f"unexpected keys: {_listed(unexpected)}")
        if shapes:
            parts.append(f"shape mismatches: {_listed(shapes)}")
        hint = ""
        if unexpected and all(k.startswith("module.") for k in unexpected):
            hint = " (saved from DataParallel/DistributedDataParallel: strip the 'module.' prefix)"
        shape = "x".join(str(v) for v in in_shape)
        raise CheckpointError(
            f"checkpoint {path} does not fit model {model_name} built for {shape} inputs and "
            f"{num_classes} classes: {'; '.join(parts)}{hint}. Save the state_dict of that same "
            "architecture built for this dataset's input shape and class count")
    try:
        model.load_state_dict(state, strict=True)
    except Exception as e:  # dtype or other problems load_state_dict finds
        raise CheckpointError(f"checkpoint {path} does not load into model {model_name}: {oneline(e)}") from None
