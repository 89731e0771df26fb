"""Structured pruning that really shrinks layers (the study's Tables 5, 6, 9, 10).

Whole neurons (Linear outputs) and, with ``layers="dense+conv"``, whole filters (Conv2d output
channels) are removed by torch-pruning's ``MagnitudePruner`` (L1 magnitude importance; its
DependencyGraph shrinks every layer that consumes a pruned output, flatten included). The
output layer and the first convolution are never pruned (as in the study, whose dense+conv
LeNet-5 kept all of conv1 and a quarter/half of conv2's filters). The pruned module is rebuilt from the registry with the new
widths (``state.arch["kwargs"]``, read back by the width reader the model's definition declares:
``@register_model(widths=...)``) or, for any other model (user callables, torchvision, ResNets),
from the resized layers' sizes (``state.arch["shapes"]``, :mod:`squeezebench.models.reshape`),
so the torch artifact (state_dict + arch.json) loads through ``create_model``,
then fine-tuned.

Token grammar: ``sprune<percent>-dense`` (Linear neurons only) or ``sprune<percent>-conv``
(neurons and conv filters), with ``-r<k>`` to round every pruned layer's kept width to the
nearest multiple of ``k`` (at least ``k``; the ratio is then met per layer only approximately)
and ``-e<epochs>`` when fine-tuning differs from the default 4 (at half the recipe's peak
learning rate, cosine): ``sprune50-dense``, ``sprune75-conv``, ``sprune30-conv-r16``,
``sprune50-conv-e2``.

Why ``-r``: CPU kernels work on channel blocks of the SIMD width (ONNX Runtime's NCHWc and
oneDNN's blocked layouts: 16 fp32 lanes with AVX-512, 8 with AVX2). Widths off those blocks
run in padded or generic kernels, so exact-ratio pruning can buy nothing. Measured on ResNet-20
(2 AMX cores, random weights, batch 256): 30 % of filters removed exactly (widths 11/22/44, 44 %
fewer MACs) ran 71.0 ms per batch on ONNX Runtime against 67.8 ms dense, and a bf16 training
step took 296 ms against 181; rounded to multiples of 16 (16/16/48, 38 % fewer MACs) it ran
44.0 ms and trained in 137 ms. torch-pruning's own ``round_to`` rounds the kept width down;
this rounds to the nearest multiple, so a ratio asks for about what it says.

Default allowed top-1 drop (pp): 1.0 up to a ratio of 50 %, 3.0 up to 75 %, 5.0 above (and above
50 % when filters go too: sprune75-conv on LeNet-5/MNIST measured 95.40-97.71 % against 99.21 %
across runs and recipes, 4 to 8 fine-tuning epochs); when
filters go too, on a dataset that does not declare itself easy (``difficulty`` in
``squeezebench.data.DATASET_FACTS``; MNIST does), ``CONV_ALLOWED_DROP_PP`` (4 pp up to 50 %, 12 pp
up to 75 %, 20 pp above) applied by the handler: LeNet-5's few filters are all it has on
CIFAR-10 (the study lost 3.2 pp (dense) and 4.7 pp (dense+conv) on MNIST, 4.8 and 5.8 pp on
CIFAR-10). Measured on LeNet-5, sprune50-conv after 4 epochs: at 0.2 x lr -0.14 pp (MNIST) and
-1.8 pp (CIFAR-10); at 0.5 x lr (the default) -0.13 and -1.1 pp; at the full lr -3.1 and -2.4 pp.
sprune75-conv on CIFAR-10 lost 13.9 pp after 2 epochs at 0.2 x lr and 9.2 pp after 4 at the full
lr; pruning conv1 too cost 9 and 25 pp (hence conv1 stays). An explicit ``allowed_drop_pp``
always wins, then the user's ``allowed-drop.structured``. Layers named in the user's
``keep-layers`` are kept whole too.
"""
from __future__ import annotations

import copy
import re
from dataclasses import dataclass

import torch
from torch import nn

from squeezebench.data import dataset_fact
from squeezebench.models import changed_shapes, create_model, model_entry, model_from_arch
from squeezebench import training
from squeezebench.compression.base import ChainState, CompressionConfig, ConfigError, register_handler
from squeezebench.compression.prune import _pct, finetune_config, keep_zeros, recipe_tag
from squeezebench.metrics import count_macs, count_params

_TOKEN = re.compile(r"^sprune(?P<pct>\d+(?:\.\d+)?)-(?P<layers>dense|conv)(?:-r(?P<round>\d+))?(?:-e(?P<epochs>\d+))?$")
DEFAULT_EPOCHS = 4
# Allowed drop when conv filters are removed, on datasets harder than MNIST: (max ratio, pp).
CONV_ALLOWED_DROP_PP = ((0.5, 4.0), (0.75, 12.0), (1.0, 20.0))


@dataclass(frozen=True)
class StructuredPruneConfig(CompressionConfig):
    """Remove ``ratio`` of the neurons (and filters with ``layers="dense+conv"``) of every hidden
    layer by L1 magnitude, then fine-tune ``finetune_epochs`` epochs at ``lr_scale`` x the
    recipe's learning rate. ``round_to`` > 1 rounds each pruned layer's kept width to the nearest
    multiple of it (at least ``round_to``)."""

    kind = "structured"  # the key of the user's allowed-drop table too
    ratio: float = 0.5
    layers: str = "dense"  # dense | dense+conv
    finetune_epochs: int = DEFAULT_EPOCHS
    lr_scale: float = 0.5
    round_to: int = 1

    def __post_init__(self) -> None:
        if not isinstance(self.ratio, (int, float)) or not 0.0 < self.ratio < 1.0:
            raise ConfigError(f"ratio is the fraction of neurons/filters to remove, 0 < ratio < 1, got "
                              f"{self.ratio!r}; for half write ratio=0.5 (token sprune50-dense)")
        if self.layers not in ("dense", "dense+conv"):
            raise ConfigError(f"layers must be 'dense' (token sprune50-dense) or 'dense+conv' "
                              f"(token sprune50-conv), got {self.layers!r}")
        if not isinstance(self.finetune_epochs, int) or self.finetune_epochs < 0:
            raise ConfigError(f"finetune_epochs must be an integer >= 0, got {self.finetune_epochs!r}")
        if not self.lr_scale > 0:
            raise ConfigError(f"lr_scale must be > 0, got {self.lr_scale!r}; try 0.5")
        if isinstance(self.round_to, bool) or not isinstance(self.round_to, int) or self.round_to < 1:
            raise ConfigError(f"round_to must be an integer >= 1 (1: exact widths), got {self.round_to!r}; "
                              "for SIMD-sized channel blocks use 16 (token sprune30-conv-r16)")

    def token(self) -> str:
        t = f"sprune{_pct(self.ratio)}-{'conv' if self.layers == 'dense+conv' else 'dense'}"
        t += f"-r{self.round_to}" if self.round_to != 1 else ""
        return t + (f"-e{self.finetune_epochs}" if self.finetune_epochs != DEFAULT_EPOCHS else "")

    @classmethod
    def parse(cls, token: str):
        m = _TOKEN.match(token)
        if not m:
            return None
        return cls(ratio=float(m["pct"]) / 100.0, layers="dense+conv" if m["layers"] == "conv" else "dense",
                   finetune_epochs=int(m["epochs"]) if m["epochs"] else DEFAULT_EPOCHS,
                   round_to=int(m["round"]) if m["round"] else 1)

    def needs_torch_module(self) -> str:
        return "prune/fine-tune"

    def default_allowed_drop(self) -> float:
        if self.ratio <= 0.5 + 1e-9:
            return 1.0
        if self.layers == "dense+conv":
            # Filters too, past half: the study lost 4.7 pp on MNIST; we measured 2.7-3.8 pp at 75 %
            # on LeNet-5 (run to run), so 3 pp would fail on noise rather than on a regression.
            return 5.0
        return 3.0 if self.ratio <= 0.75 + 1e-9 else 5.0


def layer_shapes(model: nn.Module) -> dict[str, list[int]]:
    return {n: list(m.weight.shape) for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))}


def nearest_kept(n_pruned: int, channels: int, round_to: int) -> int:
    """How many of ``channels`` to prune so that the kept width is the multiple of ``round_to``
    nearest to ``channels - n_pruned`` (at least ``round_to``, at most ``channels``)."""
    keep = max(round_to, int((channels - n_pruned) / round_to + 0.5) * round_to)
    return max(channels - min(keep, channels), 0)


def _pruner_class(tp):
    """torch-pruning's MagnitudePruner with its ``round_to`` hook rounding to the nearest multiple
    (its own rounds the kept width down: 30 % of 16 filters with round_to=16 would remove all)."""
    base = tp.pruner.MagnitudePruner
    if not callable(getattr(base, "_round_to", None)):
        raise ConfigError(f"structured pruning with -r<k> needs torch-pruning's round_to hook, which "
                          f"torch-pruning {getattr(tp, '__version__', '?')} lacks; pip install -U torch-pruning")

    class NearestRoundPruner(base):
        def _round_to(self, n_pruned, current_channels, round_to):
            return nearest_kept(int(n_pruned), int(current_channels), int(round_to))

    return NearestRoundPruner


def structural_prune(model: nn.Module, arch: dict, cfg: StructuredPruneConfig,
                     keep_layers: list[str] | None = None) -> tuple[nn.Module, dict]:
    """A new registry-built model with ``cfg.ratio`` of the neurons/filters removed, and its arch.
    ``keep_layers``: module names kept whole besides the output layer and the first convolution
    (the user's ``keep-layers``)."""
    import torch_pruning as tp

    name = arch["model"]
    widths = model_entry(name).widths
    work = copy.deepcopy(model).float().eval()
    linears = [m for m in work.modules() if isinstance(m, nn.Linear)]
    convs = [m for m in work.modules() if isinstance(m, nn.Conv2d)]
    if cfg.layers == "dense+conv" and not convs:
        raise ConfigError(f"{name} has no convolutions to prune; use {cfg.token().replace('-conv', '-dense')}")
    # The output layer keeps its classes; the first convolution keeps its filters (it sees the raw
    # image; the study's dense+conv pruning also left conv1 whole: Tables 6 and 10).
    ignored: list[nn.Module] = [linears[-1]] + (convs if cfg.layers == "dense" else convs[:1])
    modules = dict(work.named_modules())
    unknown = [n for n in keep_layers or [] if n not in modules]
    if unknown:
        raise ConfigError(f"keep-layers names {unknown} that {name} does not have; its layers: "
                          + ", ".join(n for n, m in modules.items() if isinstance(m, (nn.Linear, nn.Conv2d))))
    ignored += [modules[n] for n in keep_layers or []]
    example = torch.zeros(1, *arch["in_shape"])
    pruner = _pruner_class(tp)(work, example, importance=tp.importance.MagnitudeImportance(p=1),
                               pruning_ratio=cfg.ratio, ignored_layers=ignored,
                               round_to=cfg.round_to if cfg.round_to > 1 else None)
    pruner.step()
    if widths is not None:  # the model's own constructor arguments (its definition says how)
        new_arch = {**arch, "kwargs": {**arch.get("kwargs", {}), **widths(work)}}
    else:  # any other model: the resized layers' sizes (squeezebench.models.reshape)
        fresh = create_model(name, tuple(arch["in_shape"]), arch["num_classes"], **arch.get("kwargs", {}))
        new_arch = {**arch, "shapes": changed_shapes(work, fresh)}
    rebuilt = model_from_arch(new_arch)
    try:
        rebuilt.load_state_dict(work.state_dict(), strict=True)  # proves arch.json rebuilds it
        rebuilt.eval()(example)
    except (RuntimeError, ValueError) as e:
        raise ConfigError(f"{name} could not be rebuilt with its pruned layer sizes ({str(e).splitlines()[0]}); "
                          "its forward may hard-code a size: declare how to rebuild it with "
                          "@register_model(widths=lambda m: {<constructor kwarg>: <pruned width>, ...})") from None
    return rebuilt.to(next(model.parameters()).dtype).eval(), new_arch


@register_handler(StructuredPruneConfig)
def apply_structured_prune(cfg: StructuredPruneConfig, state: ChainState) -> ChainState:
    in_shape = tuple(state.arch["in_shape"])
    before = {"shapes": layer_shapes(state.model), "params": count_params(state.model),
              "macs": count_macs(state.model, in_shape), "kwargs": dict(state.arch.get("kwargs", {}))}
    keep = state.wb.config.fact("keep-layers", state.model_name, state.dataset_name)
    if keep:
        state.key = {**state.key, "keep_layers": list(keep)}
    pruned, new_arch = structural_prune(state.model, state.arch, cfg, keep)

    def finetune(m: nn.Module) -> dict:
        if cfg.finetune_epochs == 0:
            return {}
        tc = finetune_config(state, cfg.finetune_epochs, cfg.lr_scale)
        s = training.fit(m, state.data, tc, progress=state.wb.progress, after_step=keep_zeros(m),
                         label=f"{state.model_name}/{state.dataset_name}/{cfg.token()}")
        return {"recipe": tc.as_dict(), "final_loss": s["final_loss"], "train_seconds": s["train_seconds"]}

    tag = recipe_tag("structured_prune", [finetune_config(state, cfg.finetune_epochs, cfg.lr_scale)])
    model, meta = state.cached_model(tag, cfg, finetune, model=pruned, arch=new_arch,
                                     producers=("torch", "torch-pruning"))  # it chose the kept channels
    state.model, state.arch = model, new_arch
    user_drop = state.wb.config.allowed_drop(cfg.kind, state.model_name, state.dataset_name)
    if cfg.allowed_drop_pp is None and user_drop is None and cfg.layers == "dense+conv" \
            and dataset_fact(state.dataset_name, "difficulty") != "easy":
        conv_drop = next(pp for r, pp in CONV_ALLOWED_DROP_PP if cfg.ratio <= r + 1e-9)
        state.allowed_drop_pp = max(state.allowed_drop_pp, conv_drop)
    state.facts["structured_prune"] = {
        "ratio": cfg.ratio, "layers": cfg.layers, "finetune_epochs": cfg.finetune_epochs, "round_to": cfg.round_to,
        "method": "torch_pruning.pruner.MagnitudePruner + MagnitudeImportance(p=1)",
        "before": before,
        "after": {"shapes": layer_shapes(model), "params": count_params(model),
                  "macs": count_macs(model, in_shape), "kwargs": dict(new_arch["kwargs"])},
        "finetune": meta,
    }
    return state
