"""Seeded, deterministic CPU training over in-memory tensors.

One loop serves baselines, distillation, fine-tuning after pruning and QAT: the
caller may pass ``loss_fn(model, inputs, targets, indices)``, where ``indices`` are
the rows of the training set in the batch (for looking up precomputed teacher logits).
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, replace
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from squeezebench.data import Dataset
from squeezebench.machine import cpu_identity

Progress = Callable[[str], None]
AUTOCAST = ("none", "bf16-native")
_NATIVE_BF16 = ("avx512_bf16", "amx_bf16", "bf16")  # x86 AVX512-BF16 / AMX, Arm BF16


def native_bf16() -> bool:
    """Whether this CPU computes bf16 natively (else bf16 autocast would be emulated, and slower)."""
    return any(f in (cpu_identity().get("cpu_isa") or []) for f in _NATIVE_BF16)
LossFn = Callable[[nn.Module, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class TrainConfig:
    """What to train with; part of every trained artifact's cache key."""

    epochs: int = 10
    lr: float = 1e-3
    batch_size: int = 128
    optimizer: str = "adam"  # sgd | adam | adamw
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 0.0
    schedule: str = "onecycle"  # constant | cosine | onecycle
    pct_start: float = 0.25  # onecycle: share of steps spent warming up
    label_smoothing: float = 0.0
    augment: bool = False  # random 4-px-padded crop + horizontal flip (natural images)
    seed: int = 0
    # NHWC activations and weights while training: oneDNN's conv kernels ran faster that way on
    # CPU (one probe, ResNet-20 on 2 cores: 174 -> 140 ms per step of 128 images); the saved
    # state_dict holds the same values whatever the layout.
    channels_last: bool = False
    # Mixed precision: "bf16-native" trains under torch.autocast(bfloat16) (weights and optimizer
    # stay float32) on CPUs that compute bf16 natively (AVX512-BF16, AMX-BF16, Arm BF16) and in
    # float32 elsewhere; the cache key and the training summary record which ran (one probe,
    # ResNet-20 on 2 AVX512-BF16 cores: 49.2 -> 32.4 s per epoch).
    autocast: str = "none"
    # Progressive resizing: (epochs, side) stages, in order, whose epochs train on the augmented
    # images resized so that their longer side is `side`, before the remaining epochs at full
    # size. A small epoch costs a fraction of a full one (ResNet-20 on 2 cores: 24 px 0.6x,
    # 16 px 0.35x), so more epochs fit in the same time; the last full-size epochs adapt the
    # network to the size it is tested at (FFCV trains ImageNet so).
    resize_stages: tuple = ()

    def __post_init__(self) -> None:
        if self.epochs < 0 or self.batch_size < 1 or self.lr <= 0:
            raise ValueError(f"epochs >= 0, batch_size >= 1 and lr > 0 are required, got {self}")
        if self.optimizer not in ("sgd", "adam", "adamw"):
            raise ValueError(f"optimizer must be sgd, adam or adamw, got {self.optimizer!r}")
        if self.schedule not in ("constant", "cosine", "onecycle"):
            raise ValueError(f"schedule must be constant, cosine or onecycle, got {self.schedule!r}")
        if self.autocast not in AUTOCAST:
            raise ValueError(f"autocast must be one of {', '.join(AUTOCAST)}, got {self.autocast!r}")
        stages = tuple(tuple(s) if isinstance(s, (list, tuple)) else (s,) for s in self.resize_stages)
        if any(len(s) != 2 or not all(type(v) is int and v >= 1 for v in s) for s in stages) or (
                stages and sum(e for e, _ in stages) >= self.epochs):
            raise ValueError(f"resize_stages is a list of [epochs, side] pairs of positive ints that leaves at "
                             f"least one of the {self.epochs} epochs at full size, e.g. [[16, 24]]; got "
                             f"{self.resize_stages!r}")
        object.__setattr__(self, "resize_stages", stages)

    def derived(self, **changes) -> "TrainConfig":
        """A recipe for fine-tuning or distilling from this one: ``changes`` applied, and no
        progressive resizing (its stages belong to the full schedule, and distillation's teacher
        logits are of the full-size images)."""
        return replace(self, **{"resize_stages": (), **changes})

    def effective_precision(self) -> str:
        """What the training arithmetic runs in on this machine: "bf16 autocast" or "f32"."""
        return "bf16 autocast" if self.autocast == "bf16-native" and native_bf16() else "f32"

    def as_dict(self) -> dict:
        d = asdict(self)
        if not self.resize_stages:  # keys of recipes that don't resize stay as they were
            del d["resize_stages"]
        if self.autocast != "none":  # the same recipe trains differently on CPUs without native bf16
            d["precision_effective"] = self.effective_precision()
        return d


def init_model(name: str, data: Dataset, seed: int, **kwargs) -> nn.Module:
    """A registry model with seeded initial weights (the seed fixes them too)."""
    from squeezebench.models import create_model

    torch.manual_seed(seed)
    return create_model(name, data.in_shape, data.num_classes, **kwargs)


def _optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov,
                               weight_decay=cfg.weight_decay)
    cls = torch.optim.Adam if cfg.optimizer == "adam" else torch.optim.AdamW
    return cls(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def _augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    n, _, h, w = x.shape
    padded = F.pad(x, (4, 4, 4, 4), mode="reflect")
    dy = torch.randint(0, 9, (n,), generator=gen)
    dx = torch.randint(0, 9, (n,), generator=gen)
    rows = (dy.view(n, 1) + torch.arange(h).view(1, h))  # n, h
    cols = (dx.view(n, 1) + torch.arange(w).view(1, w))  # n, w
    idx_n = torch.arange(n).view(n, 1, 1)
    out = padded.permute(0, 2, 3, 1)[idx_n, rows.view(n, h, 1), cols.view(n, 1, w)].permute(0, 3, 1, 2)
    flip = torch.rand(n, generator=gen) < 0.5
    out[flip] = out[flip].flip(-1)
    return out.contiguous()


def _resize(x: torch.Tensor, side: int) -> torch.Tensor:
    h, w = x.shape[-2:]
    scale = side / max(h, w)
    size = (max(1, round(h * scale)), max(1, round(w * scale)))
    return F.interpolate(x, size=size, mode="bilinear", antialias=True, align_corners=False)


@torch.no_grad()
def _check_resizable(model: nn.Module, x: torch.Tensor, side: int) -> None:
    was_training = model.training
    try:
        model.eval()(_resize(x, side))
    except RuntimeError as e:
        raise ValueError(f"resize_stages: {type(model).__name__} does not accept images of {side} px (a layer "
                         f"sized for {tuple(x.shape[-2:])}?): {str(e).splitlines()[0]}; drop resize_stages from "
                         f"its recipe, or pool globally before the classifier") from None
    finally:
        model.train(was_training)


def fit(
    model: nn.Module,
    data: Dataset,
    cfg: TrainConfig,
    *,
    loss_fn: LossFn | None = None,
    progress: Progress | None = None,
    label: str = "train",
    after_step: Callable[[nn.Module], None] | None = None,
) -> dict:
    """Train ``model`` in place on ``data``'s training split; return a summary dict."""
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    x_all = data.normalize(data.x_train)
    y_all = data.y_train
    n = len(x_all)
    steps_per_epoch = math.ceil(n / cfg.batch_size)
    total = max(1, steps_per_epoch * cfg.epochs)
    sides = [side for epochs, side in cfg.resize_stages for _ in range(epochs)]  # Dataset holds NCHW images
    for side in sorted(set(sides)):
        _check_resizable(model, x_all[:2], side)
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    opt = _optimizer(model, cfg)
    amp = cfg.effective_precision() == "bf16 autocast"
    if cfg.schedule == "onecycle" and total >= 4:
        # OneCycleLR divides by the warm-up length: give it at least one step on tiny runs.
        pct = min(max(cfg.pct_start, 2.0 / total), 0.5)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=total, pct_start=pct)
    elif cfg.schedule == "cosine":
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total)
    else:
        sched = None
    t0 = time.perf_counter()
    last_loss = float("nan")
    losses: list[float] = []
    for epoch in range(cfg.epochs):
        model.train()
        perm = torch.randperm(n, generator=gen)
        running, seen = 0.0, 0
        for i in range(0, n, cfg.batch_size):
            idx = perm[i:i + cfg.batch_size]
            xb, yb = x_all[idx], y_all[idx]
            if cfg.augment:
                xb = _augment(xb, gen)
            if epoch < len(sides):
                xb = _resize(xb, sides[epoch])
            if cfg.channels_last:
                xb = xb.contiguous(memory_format=torch.channels_last)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
                if loss_fn is None:
                    loss = F.cross_entropy(model(xb).float(), yb, label_smoothing=cfg.label_smoothing)
                else:
                    loss = loss_fn(model, xb, yb, idx)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if sched is not None:
                sched.step()
            if after_step is not None:
                after_step(model)
            running += loss.item() * len(idx)
            seen += len(idx)
        last_loss = running / max(seen, 1)
        losses.append(last_loss)
        if progress:
            progress(f"{label}: epoch {epoch + 1}/{cfg.epochs} loss {last_loss:.4f} "
                     f"({time.perf_counter() - t0:.0f}s)")
    if cfg.channels_last:
        model.to(memory_format=torch.contiguous_format)
    model.eval()
    return {"epochs": cfg.epochs, "final_loss": last_loss, "epoch_losses": losses,
            "train_seconds": time.perf_counter() - t0, "train_precision": cfg.effective_precision()}


@torch.inference_mode()
def predict_logits(model: nn.Module, x: torch.Tensor, batch_size: int = 256,
                   channels_last: bool = False) -> torch.Tensor:
    """Logits of ``model`` on ``x`` in batches. ``channels_last`` (4-D float input only) runs the
    model in NHWC and puts it back in its default layout after: oneDNN's conv kernels ran ResNet-20
    1.5x faster so (2 cores; and batches of 256 1.5x faster than 1024)."""
    model.eval()
    nhwc = channels_last and x.dim() == 4
    if nhwc:
        model.to(memory_format=torch.channels_last)
    try:
        return torch.cat([model(x[i:i + batch_size].contiguous(memory_format=torch.channels_last) if nhwc
                                else x[i:i + batch_size]) for i in range(0, len(x), batch_size)])
    finally:
        if nhwc:
            model.to(memory_format=torch.contiguous_format)


def top1(logits: torch.Tensor, targets: torch.Tensor) -> float:
    """Top-1 accuracy in percent."""
    return float((logits.argmax(1) == targets).float().mean()) * 100.0
