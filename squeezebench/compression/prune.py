"""Unstructured magnitude pruning with fine-tuning (Han et al. 2015; the study's Tables 3, 4, 7, 8).

``torch.nn.utils.prune`` does the pruning: ``l1_unstructured`` per layer (``scope="layer"``,
token ``prune80``) or ``global_unstructured`` over every Linear/Conv weight at once
(``scope="global"``, token ``gprune80``). Pruning is iterative: ``steps`` rounds, each
removing the same fraction of the weights still alive (so the kept fraction after round i of k is
``(1 - sparsity) ** (i / k)``) and each followed by ``finetune_epochs`` epochs of fine-tuning
through :func:`squeezebench.training.fit` with the model's own recipe at ``lr_scale`` times its
learning rate (cosine schedule). The masks stay attached while fine-tuning (pruned weights get
no update) and are made permanent with ``prune.remove`` at the end, so every exported artifact
carries the zeros.

Token grammar: ``[g]prune<percent>[-s<steps>][-e<epochs per step>]``, e.g. ``prune80``,
``gprune95``, ``gprune98-s4-e3``. Suffixes appear only when they differ from the defaults
(:func:`default_steps`: 1 round up to 80 %, 2 up to 90 %, 3 above; :func:`default_finetune_epochs`:
1 epoch per round up to 80 %, 2 above; lr_scale 0.5). Measured on LeNet-300-100/MNIST with the
SGD recipe: prune80 -0.02 pp, prune90 -0.34 pp, gprune96-s4-e4 (+int8-static) -0.24 pp; on LeNet-5
gprune96-s4-e4 (+int8-static) -0.4 pp. Global scope keeps far more accuracy than layer-wise at the
same sparsity (it leaves the small last layers denser).

Default allowed top-1 drop (pp against the fp32 baseline): 1.0 up to 90 % sparsity, 2.0 up to
95 %, 5.0 above (98 %: a fiftieth of the weights is left; the study itself lost 10 pp at 90 %).
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn
from torch.nn.utils import prune

from squeezebench import training
from squeezebench.compression.base import ChainState, CompressionConfig, ConfigError, register_handler
from squeezebench.metrics import nonzero_per_layer
from squeezebench.recipes import recipe_for

PRUNABLE = (nn.Linear, nn.Conv2d)
_TOKEN = re.compile(r"^(?P<g>g?)prune(?P<pct>\d+(?:\.\d+)?)(?:-s(?P<steps>\d+))?(?:-e(?P<epochs>\d+))?"
                    r"(?:-k(?P<keep>fl|f|l))?$")
# Layers kept dense, by position among the Linear/Conv layers (a model's names differ; its first
# and last layers are where pruning costs the most accuracy per weight removed).
KEEP = {"": (), "first": ("first",), "last": ("last",), "ends": ("first", "last")}
KEEP_TOKEN = {"": "", "first": "-kf", "last": "-kl", "ends": "-kfl"}


def default_steps(sparsity: float) -> int:
    """Pruning rounds when none are given: 1 up to 80 %, 2 up to 90 %, 3 above."""
    return 1 if sparsity <= 0.8 + 1e-9 else 2 if sparsity <= 0.9 + 1e-9 else 3


def default_finetune_epochs(sparsity: float) -> int:
    """Fine-tuning epochs per round when none are given: 1 up to 80 %, 2 above."""
    return 1 if sparsity <= 0.8 + 1e-9 else 2


def _pct(x: float) -> str:
    v = round(x * 100, 6)
    return str(int(v)) if v == int(v) else f"{v:g}"


@dataclass(frozen=True)
class PruneConfig(CompressionConfig):
    """Magnitude-prune ``sparsity`` of the Linear/Conv weights (biases are kept), fine-tuning after
    each of ``steps`` rounds for ``finetune_epochs`` epochs at ``lr_scale`` x the recipe's lr.

    ``steps=None`` / ``finetune_epochs=None`` mean :func:`default_steps` /
    :func:`default_finetune_epochs` (resolved on construction, so ids and cache keys always name
    the real numbers)."""

    kind = "prune"
    sparsity: float = 0.8
    scope: str = "layer"  # layer (l1_unstructured per layer) | global (global_unstructured)
    steps: int | None = None
    finetune_epochs: int | None = None
    lr_scale: float = 0.5
    keep: str = ""  # layers kept dense: "" | first | last | ends (token -kf, -kl, -kfl)

    def __post_init__(self) -> None:
        if not isinstance(self.sparsity, (int, float)) or not 0.0 < self.sparsity < 1.0:
            raise ConfigError(f"sparsity is a fraction of weights to remove, 0 < sparsity < 1, got "
                              f"{self.sparsity!r}; for 80 % write sparsity=0.8 (token prune80)")
        if self.scope not in ("layer", "global"):
            raise ConfigError(f"scope must be 'layer' (token prune80) or 'global' (token gprune80), "
                              f"got {self.scope!r}")
        if self.steps is None:
            object.__setattr__(self, "steps", default_steps(self.sparsity))
        if self.finetune_epochs is None:
            object.__setattr__(self, "finetune_epochs", default_finetune_epochs(self.sparsity))
        if not isinstance(self.steps, int) or self.steps < 1:
            raise ConfigError(f"steps (pruning rounds) must be an integer >= 1, got {self.steps!r}; "
                              "use steps=1 for one-shot pruning")
        if not isinstance(self.finetune_epochs, int) or self.finetune_epochs < 0:
            raise ConfigError(f"finetune_epochs must be an integer >= 0 (0 = no fine-tuning), got "
                              f"{self.finetune_epochs!r}")
        if self.keep not in KEEP:
            raise ConfigError(f"keep names the layers kept dense: one of first, last, ends (both) or '' "
                              f"(none), got {self.keep!r}")
        if not self.lr_scale > 0:
            raise ConfigError(f"lr_scale multiplies the recipe's learning rate and must be > 0, got "
                              f"{self.lr_scale!r}; try 0.5")
        if self.allowed_drop_pp is not None and self.allowed_drop_pp < 0:
            raise ConfigError(f"allowed_drop_pp must be >= 0 (or None for the default), got {self.allowed_drop_pp}")

    def token(self) -> str:
        t = f"{'g' if self.scope == 'global' else ''}prune{_pct(self.sparsity)}"
        if self.steps != default_steps(self.sparsity):
            t += f"-s{self.steps}"
        if self.finetune_epochs != default_finetune_epochs(self.sparsity):
            t += f"-e{self.finetune_epochs}"
        return t + KEEP_TOKEN[self.keep]

    @classmethod
    def parse(cls, token: str):
        m = _TOKEN.match(token)
        if not m:
            return None
        pct = float(m["pct"])
        return cls(sparsity=pct / 100.0, scope="global" if m["g"] else "layer",
                   steps=int(m["steps"]) if m["steps"] else None,
                   finetune_epochs=int(m["epochs"]) if m["epochs"] else None,
                   keep={"f": "first", "l": "last", "fl": "ends"}.get(m["keep"] or "", ""))

    def needs_torch_module(self) -> str:
        return "prune/fine-tune"

    def default_allowed_drop(self) -> float:
        if self.sparsity <= 0.9 + 1e-9:
            return 1.0
        return 2.0 if self.sparsity <= 0.95 + 1e-9 else 5.0

    def schedule(self) -> list[float]:
        """Cumulative sparsity after each round."""
        return [1.0 - (1.0 - self.sparsity) ** ((i + 1) / self.steps) for i in range(self.steps)]


def prunable(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, PRUNABLE)]


def to_prune(model: nn.Module, keep: str = "") -> list[tuple[str, nn.Module]]:
    """The Linear/Conv layers a prune step prunes: all of them but those ``keep`` keeps dense."""
    layers = prunable(model)
    drop = {0 if k == "first" else len(layers) - 1 for k in KEEP[keep]} if len(layers) > 1 else set()
    return [x for i, x in enumerate(layers) if i not in drop]


def finetune_config(state: ChainState, epochs: int, lr_scale: float, seed_offset: int = 0) -> training.TrainConfig:
    """The current model's recipe, shortened and at a lower learning rate, for recovering accuracy."""
    base = recipe_for(state.arch["model"], state.dataset_name, state.wb.config)
    return base.derived(epochs=epochs, lr=base.lr * lr_scale, schedule="cosine", seed=base.seed + seed_offset)


def recipe_tag(what: str, recipes: list[training.TrainConfig]) -> str:
    """A cached_model tag carrying the resolved fine-tuning recipes, so a changed recipe in
    squeezebench.recipes is a new cache entry."""
    return f"{what} recipes={json.dumps([r.as_dict() for r in recipes], sort_keys=True)}"


def zero_masks(model: nn.Module) -> dict[str, torch.Tensor]:
    """Boolean keep-masks of every Linear/Conv weight that has exact zeros (i.e. was pruned)."""
    out = {}
    for name, mod in prunable(model):
        w = mod.weight
        if bool((w == 0).any()):
            out[f"{name}.weight" if name else "weight"] = (w != 0).detach().clone()
    return out


def keep_zeros(model: nn.Module) -> Callable[[nn.Module], None] | None:
    """An ``after_step`` callback for :func:`training.fit` that re-zeroes the weights that are zero
    now, so training after pruning (distillation, QAT) keeps the sparsity; None if nothing is zero.

    Masks are looked up by parameter name, so the callback also works on a module that wraps
    the same layers under the same names."""
    masks = zero_masks(model)
    if not masks:
        return None

    @torch.no_grad()
    def reapply(m: nn.Module) -> None:
        params = dict(m.named_parameters())
        for name, keep in masks.items():
            p = params.get(name)
            if p is not None and p.shape == keep.shape:
                p.mul_(keep.to(p.dtype))

    return reapply


def _prune_round(model: nn.Module, cfg: PruneConfig, target: float) -> None:
    """Prune (more) weights so that ``target`` of every layer (layer scope) or of all weights
    together (global scope) is zero. Counts are integers of still-alive weights, so rounds stack
    exactly through torch's PruningContainer."""
    layers = to_prune(model, cfg.keep)

    def alive(m: nn.Module) -> int:
        mask = getattr(m, "weight_mask", None)
        return m.weight.numel() if mask is None else int(mask.sum())

    if cfg.scope == "layer":
        for _, m in layers:
            n = m.weight.numel()
            amount = int(round(target * n)) - (n - alive(m))
            if amount > 0:
                prune.l1_unstructured(m, "weight", amount=amount)
            elif not prune.is_pruned(m):
                prune.identity(m, "weight")
    else:
        total = sum(m.weight.numel() for _, m in layers)
        amount = int(round(target * total)) - sum(m.weight.numel() - alive(m) for _, m in layers)
        if amount > 0:
            prune.global_unstructured([(m, "weight") for _, m in layers],
                                      pruning_method=prune.L1Unstructured, amount=amount)


def prune_and_finetune(model: nn.Module, cfg: PruneConfig, state: ChainState) -> dict:
    """Prune ``model`` in place following ``cfg`` and fine-tune; masks end up permanent."""
    data = state.data
    summaries = []
    orders = {id(m): list(m._parameters) for _, m in prunable(model)}
    # Zeros that are already there (a pruned model distilled further) stay zero.
    keep = keep_zeros(model)
    if keep is not None:
        keep(model)
    for i, target in enumerate(cfg.schedule()):
        _prune_round(model, cfg, target)
        if cfg.finetune_epochs > 0:
            tc = finetune_config(state, cfg.finetune_epochs, cfg.lr_scale, seed_offset=i)
            s = training.fit(model, data, tc, progress=state.wb.progress,
                             label=f"{state.model_name}/{state.dataset_name}/{cfg.token()} round {i + 1}")
            summaries.append({"round": i + 1, "target_sparsity": target, "recipe": tc.as_dict(),
                              "final_loss": s["final_loss"], "train_seconds": s["train_seconds"]})
    for _, m in prunable(model):
        if prune.is_pruned(m):
            prune.remove(m, "weight")
            # remove() re-registers `weight` last; restore the module's own order so a freshly
            # pruned model and one loaded from the cache have identical state_dicts (and artifacts).
            m._parameters = type(m._parameters)((k, m._parameters[k]) for k in orders[id(m)])
    model.eval()
    return {"rounds": summaries}


def sparsity_facts(model: nn.Module) -> dict:
    layers = nonzero_per_layer(model)
    w = sum(v["weight"] for v in layers.values())
    nz = sum(v["weight_nonzero"] for v in layers.values())
    return {"nonzero_per_layer": layers, "weights": w, "weights_nonzero": nz,
            "achieved_sparsity": 1.0 - nz / w if w else 0.0}


@register_handler(PruneConfig)
def apply_prune(cfg: PruneConfig, state: ChainState) -> ChainState:
    before = nonzero_per_layer(state.model)
    tag = recipe_tag("prune", [finetune_config(state, cfg.finetune_epochs, cfg.lr_scale, i) for i in range(cfg.steps)])
    model, meta = state.cached_model(tag, cfg, lambda m: prune_and_finetune(m, cfg, state))
    state.model = model
    state.facts["prune"] = {
        "sparsity": cfg.sparsity, "scope": cfg.scope, "steps": cfg.steps,
        "finetune_epochs_per_step": cfg.finetune_epochs, "lr_scale": cfg.lr_scale,
        "kept_dense": sorted(set(n for n, _ in prunable(model)) - set(n for n, _ in to_prune(model, cfg.keep))),
        "method": f"torch.nn.utils.prune.{'l1_unstructured' if cfg.scope == 'layer' else 'global_unstructured'}",
        "rounds": meta.get("rounds", []),
        "nonzero_per_layer_before": before,
        **sparsity_facts(model),
    }
    return state
