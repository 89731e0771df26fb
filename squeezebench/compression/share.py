"""Weight sharing (Deep Compression, Han et al. 2016, section 3): every Linear/Conv weight tensor
takes at most ``2**bits`` distinct values, a per-layer codebook found by k-means, then fine-tuned.

* Clustering: ``scipy.cluster.vq.kmeans2`` on each layer's nonzero weights, initialised linearly
  between their minimum and maximum (the paper found linear initialisation best: it keeps the
  few large weights that matter). Weights that are exactly zero (pruned earlier in the chain)
  stay zero and take one codebook slot, so a pruned layer gets ``2**bits - 1`` centroids.
* Fine-tuning: the cluster of each weight is fixed; after every optimizer step each centroid is
  set to the mean of its cluster's updated weights and the weights back to their centroid. That
  is the paper's shared-centroid update (the gradients of a cluster's weights summed into its
  centroid) with the step divided by the cluster's size. Zeros stay zero.
* Storage: the weights are ordinary float tensors with few values; the compact encoding
  (:mod:`squeezebench.encoding`) stores any tensor with at most 256 distinct values as its
  codebook plus ``bits``-wide indices (sparse with relative indices where zeros dominate), which
  is where the size goes down. Runtimes get the float weights: none of ours executes codebooks.

Token grammar: ``share<bits>[-e<epochs>]``, bits 1 to 8, e.g. ``share4`` (16 values per layer,
1 fine-tuning epoch at a tenth of the recipe's peak learning rate), ``prune90+share5-e2``.
Default allowed top-1 drop: 1.0 pp (the paper lost none at 4-5 bits on LeNet and AlexNet).
"""
from __future__ import annotations

import re
import warnings
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from squeezebench import training
from squeezebench.compression.base import ChainState, CompressionConfig, ConfigError, register_handler
from squeezebench.compression.prune import finetune_config, prunable, recipe_tag

_TOKEN = re.compile(r"^share(?P<bits>\d+)(?:-e(?P<epochs>\d+))?$")
DEFAULT_EPOCHS = 1


@dataclass(frozen=True)
class WeightShareConfig(CompressionConfig):
    """Share ``2**bits`` values per Linear/Conv weight tensor (k-means), then fine-tune the
    centroids for ``finetune_epochs`` epochs at ``lr_scale`` x the recipe's learning rate."""

    kind = "share"
    bits: int = 4
    finetune_epochs: int = DEFAULT_EPOCHS
    lr_scale: float = 0.1

    def __post_init__(self) -> None:
        if isinstance(self.bits, bool) or not isinstance(self.bits, int) or not 1 <= self.bits <= 8:
            raise ConfigError(f"bits is the codebook index width, an integer from 1 to 8, got {self.bits!r}; "
                              "for 16 shared values per layer write bits=4 (token share4)")
        if isinstance(self.finetune_epochs, bool) or not isinstance(self.finetune_epochs, int) \
                or self.finetune_epochs < 0:
            raise ConfigError(f"finetune_epochs must be an integer >= 0 (0: k-means only), got "
                              f"{self.finetune_epochs!r}")
        if not self.lr_scale > 0:
            raise ConfigError(f"lr_scale multiplies the recipe's learning rate and must be > 0, got "
                              f"{self.lr_scale!r}; try 0.1")

    def needs_torch_module(self) -> str:
        return "cluster (k-means) and fine-tune"

    def token(self) -> str:
        return f"share{self.bits}" + (f"-e{self.finetune_epochs}" if self.finetune_epochs != DEFAULT_EPOCHS else "")

    @classmethod
    def parse(cls, token: str):
        m = _TOKEN.match(token)
        if not m:
            return None
        return cls(bits=int(m["bits"]), finetune_epochs=int(m["epochs"]) if m["epochs"] else DEFAULT_EPOCHS)


def cluster(w: np.ndarray, bits: int) -> tuple[np.ndarray, np.ndarray]:
    """Codebook and per-weight index of one weight tensor: k-means over its nonzero values
    (linear initialisation), exact zeros mapped to a centroid of 0. Returns (codebook, index)
    with ``codebook[index]`` the shared tensor (same shape as ``w``)."""
    from scipy.cluster.vq import kmeans2

    flat = w.reshape(-1).astype(np.float64)
    nz = flat != 0
    has_zero = not nz.all()
    k = (1 << bits) - (1 if has_zero else 0)
    vals = flat[nz]
    index = np.zeros(flat.shape, dtype=np.int64)
    if vals.size == 0:  # an all-zero layer stays so
        return np.zeros(1), index.reshape(w.shape)
    distinct = np.unique(vals)
    if distinct.size <= k:  # already few values: each is its own centroid
        centroids, labels = distinct, np.searchsorted(distinct, vals)
    else:
        init = np.linspace(vals.min(), vals.max(), k).reshape(-1, 1)
        with warnings.catch_warnings():  # a centroid may end up with no weights: it is never used
            warnings.simplefilter("ignore")
            centroids, labels = kmeans2(vals.reshape(-1, 1), init, minit="matrix", iter=30, missing="warn")
        centroids = centroids.reshape(-1)
    codebook = np.concatenate(([0.0], centroids)) if has_zero else centroids
    index[nz] = labels + (1 if has_zero else 0)
    return codebook, index.reshape(w.shape)


class SharedWeights:
    """The fixed cluster assignment of every shared layer, and the projection that keeps the
    weights on their centroids (the ``after_step`` of fine-tuning)."""

    def __init__(self, model: nn.Module, bits: int):
        # per layer: flat cluster index, cluster sizes (fixed, so counted once), zero kept at 0
        self.assign: dict[str, tuple[torch.Tensor, torch.Tensor, bool]] = {}
        for name, mod in prunable(model):
            w = mod.weight.detach().cpu().float().numpy()
            codebook, index = cluster(w, bits)
            idx = torch.from_numpy(index)
            sizes = torch.bincount(idx.reshape(-1), minlength=len(codebook)).clamp_min(1).float()
            self.assign[name] = (idx.reshape(-1), sizes, bool((w == 0).any()))
            with torch.no_grad():
                mod.weight.copy_(torch.from_numpy(codebook).to(mod.weight.dtype)[idx])

    @torch.no_grad()
    def __call__(self, model: nn.Module) -> None:
        mods = dict(model.named_modules())
        for name, (flat_idx, sizes, has_zero) in self.assign.items():
            w = mods[name].weight
            flat = w.detach().reshape(-1).float()
            sums = torch.zeros(len(sizes), dtype=torch.float32).index_add_(0, flat_idx, flat)
            centroids = sums / sizes
            if has_zero:
                centroids[0] = 0.0
            w.copy_(centroids[flat_idx].reshape(w.shape).to(w.dtype))


def distinct_values(model: nn.Module) -> dict[str, int]:
    """Distinct values per Linear/Conv weight: what the record reports and the tests check."""
    return {name: int(torch.unique(mod.weight.detach()).numel()) for name, mod in prunable(model)}


@register_handler(WeightShareConfig)
def apply_share(cfg: WeightShareConfig, state: ChainState) -> ChainState:
    tc = finetune_config(state, cfg.finetune_epochs, cfg.lr_scale) if cfg.finetune_epochs else None

    def build(m: nn.Module) -> dict:
        project = SharedWeights(m, cfg.bits)
        if tc is None:
            return {}
        s = training.fit(m, state.data, tc, progress=state.wb.progress, after_step=project,
                         label=f"{state.model_name}/{state.dataset_name}/{cfg.token()}")
        project(m)  # the weights end on their centroids whatever the last step did
        return {"recipe": tc.as_dict(), "final_loss": s["final_loss"], "train_seconds": s["train_seconds"]}

    model, meta = state.cached_model(recipe_tag("share", [tc] if tc else []), cfg, build,
                                     producers=("torch", "scipy"))
    values = distinct_values(model)
    if max(values.values(), default=0) > (1 << cfg.bits):
        raise RuntimeError(f"weight sharing left {max(values.values())} distinct values in a layer, more than "
                           f"the {1 << cfg.bits} of {cfg.token()}: {values}")
    state.model = model
    state.facts["share"] = {"bits": cfg.bits, "finetune_epochs": cfg.finetune_epochs,
                            "method": "scipy.cluster.vq.kmeans2 per layer (linear init), centroids fine-tuned",
                            "distinct_values": values, "finetune": meta}
    return state
