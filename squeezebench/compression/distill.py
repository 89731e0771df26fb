"""Knowledge distillation (Hinton et al. 2015; the study's Tables 11, 12, 17, 18 and its
temperature figure), and the from-scratch control student.

``DistillConfig(student="mlp_student")`` trains a fresh registry model (seeded init) against the
chain's *current* model as teacher: ``loss = alpha * T^2 * KL(softmax(t/T) || softmax(s/T)) +
(1 - alpha) * CE(s, y)``. ``student=None`` distills into the current model itself, with the
row's fp32 baseline as teacher: ``prune80+kdself-t4+int8-qat`` is the study's future work
"distill the original model into a pruned copy of it, then quantize"; the current model's zeros
are kept (``prune.keep_zeros``) and it is fine-tuned at a lower learning rate.

Teacher logits on the training split are computed once per (teacher, dataset), stored in the
workbench cache (atomic, verified on every read) and looked up by the ``indices`` that
:func:`squeezebench.training.fit` passes to the loss. Training is unaugmented (the logits are of
the unaugmented images).

Records keep the teacher's row (model column = teacher, e.g. ``lenet5-mnist-kd-t4-...``); the
student's architecture, the teacher, T and alpha are in the facts under ``distill``.

Token grammar::

    kd-t<T>[-a<alpha>][-s<registry model>][-e<epochs>]   student = mlp_student unless -s
    kdself-t<T>[-a<alpha>][-e<epochs>]                   student = the chain's current model
    scratch-<registry model>[-e<epochs>]                 control: same student, CE only

``-a`` appears when alpha != 0.9 and ``-e`` when epochs are set: by default a new student (and
its scratch control) trains for its own recipe's epochs on that dataset
(:func:`squeezebench.recipes.recipe_for`), kdself for ``SELF_EPOCHS``.

Allowed top-1 drop: into a *smaller architecture* the default is per dataset,
``STUDENT_ALLOWED_DROP_PP`` by the dataset's declared difficulty (easy, e.g. MNIST: 4 pp; else
20 pp, e.g. CIFAR-10; a user's ``student-allowed-drop`` or ``allowed-drop.distill`` wins): a 784-50-10 MLP cannot
match a convolutional teacher (the study lost 1-2 pp on MNIST and 14 pp on CIFAR-10 with 50
epochs). Measured here with the students' own 4-epoch (MNIST) / 2-epoch (CIFAR-10) SGD recipes:
from LeNet-300-100, kd-t4 -0.7 pp (MNIST, scratch -0.8) and -3.5 pp (CIFAR-10, scratch -4.2);
from LeNet-5, kd-t4 -2.7 pp (MNIST, scratch -1.5: its label-smoothed soft targets carry little at
high T; kd-t1 -1.6) and -16.8 pp (CIFAR-10, scratch -16.0). Distilling into the current model
(kdself) defaults to 1 pp. An explicit ``allowed_drop_pp`` always wins.
"""
from __future__ import annotations

import copy
import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from squeezebench.models import ModelSourceError, ModelUnavailable, list_models, resolve
from squeezebench import training
from squeezebench.compression.base import ChainState, CompressionConfig, ConfigError, register_handler
from squeezebench.compression.prune import keep_zeros
from squeezebench.data import dataset_fact
from squeezebench.keys import producer_versions, source_hash
from squeezebench.metrics import count_params
from squeezebench.recipes import recipe_for

SELF_EPOCHS = 2
DEFAULT_ALPHA = 0.9
# A smaller network replacing the model: allowed drop by the dataset's declared difficulty
# (squeezebench.data.DATASET_FACTS; MNIST is easy), 20 pp for any other dataset.
STUDENT_ALLOWED_DROP_PP = {"easy": 4.0}
STUDENT_ALLOWED_DROP_FALLBACK_PP = 20.0
TEMPERATURE_SWEEP = (1, 2, 4, 8, 16, 20)

# A student is a registry name or any model spec (package.module:callable, torchvision:<name>,
# timm:<name>): letters, digits, _ . : and inner dashes (timm names), never a trailing -e<N>.
_STUDENT = r"[A-Za-z_][\w.:]*(?:-[A-Za-z_][\w.:]*)*?"
_KD = re.compile(r"^kd(?P<self>self)?-t(?P<t>\d+(?:\.\d+)?)(?:-a(?P<a>\d*\.?\d+))?"
                 rf"(?:-s(?P<s>{_STUDENT}))?(?:-e(?P<e>\d+))?$")
_SCRATCH = re.compile(rf"^scratch-(?P<s>{_STUDENT})(?:-e(?P<e>\d+))?$")


def _num(x: float) -> str:
    return f"{x:g}"


def _check_student(student: str | None) -> None:
    """A student must be a model spec that resolves (a registry name, package.module:callable,
    torchvision:<name>, timm:<name>); an exported onnx: file has no torch module to train."""
    if student is None or student in list_models():
        return
    if student.startswith("onnx:"):
        raise ConfigError(f"student {student!r} is an exported file: a student is trained, so it must be a "
                          "torch model (a registry name, package.module:callable, torchvision:<name>, timm:<name>)")
    try:
        resolve(student)
    except ModelUnavailable:
        return  # an optional library is missing: the record skips with the reason when it is built
    except (KeyError, ModelSourceError) as e:
        msg = e.args[0] if isinstance(e, KeyError) else str(e)
        raise ConfigError(f"student {student!r}: {msg} (or student=None / token kdself-t4 to distill "
                          "into the chain's current model)") from None


def _check_epochs(epochs) -> None:
    if not isinstance(epochs, int) or epochs < 1:
        raise ConfigError(f"epochs must be an integer >= 1, got {epochs!r}")


def student_drop(dataset: str, state: ChainState | None = None, kind: str = "distill") -> float:
    """Top-1 drop allowed when a smaller network replaces the model: the user's
    ``student-allowed-drop`` (or ``allowed-drop`` for ``kind``) in [tool.squeezebench], else the
    per-dataset default."""
    user = getattr(state.wb, "config", None) if state is not None else None
    if user is not None:
        for v in (user.fact("student-allowed-drop", state.model_name, dataset),
                  user.allowed_drop(kind, state.model_name, dataset)):
            if v is not None:
                return float(v)
    return STUDENT_ALLOWED_DROP_PP.get(dataset_fact(dataset, "difficulty"), STUDENT_ALLOWED_DROP_FALLBACK_PP)


@dataclass(frozen=True)
class DistillConfig(CompressionConfig):
    """Distill the chain's current model (or, with ``student=None``, the fp32 baseline) into
    ``student`` at ``temperature`` with weight ``alpha`` on the soft targets.

    ``epochs=None`` means the student's recipe epochs on the dataset (new student, resolved by
    the handler; the resolved recipe is part of the cache key) or ``SELF_EPOCHS`` (kdself);
    ``lr_scale=None`` means 1.0 (a new student trains from scratch with its recipe's lr) or 0.1
    (kdself fine-tunes a trained model)."""

    kind = "distill"
    temperature: float = 4.0
    alpha: float = DEFAULT_ALPHA
    student: str | None = "mlp_student"
    epochs: int | None = None
    lr_scale: float | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.temperature, (int, float)) or not self.temperature > 0:
            raise ConfigError(f"temperature must be > 0 (Hinton: 1-20; T=1 is plain softmax), got "
                              f"{self.temperature!r}")
        if not isinstance(self.alpha, (int, float)) or not 0.0 <= self.alpha <= 1.0:
            raise ConfigError(f"alpha weighs the soft-target loss and must be in [0, 1] (1 = soft "
                              f"targets only), got {self.alpha!r}")
        _check_student(self.student)
        if self.epochs is None and self.student is None:
            object.__setattr__(self, "epochs", SELF_EPOCHS)
        if self.epochs is not None:
            _check_epochs(self.epochs)
        if self.lr_scale is None:
            object.__setattr__(self, "lr_scale", 0.1 if self.student is None else 1.0)
        if not self.lr_scale > 0:
            raise ConfigError(f"lr_scale must be > 0, got {self.lr_scale!r}")

    def token(self) -> str:
        t = f"kd{'self' if self.student is None else ''}-t{_num(self.temperature)}"
        if self.alpha != DEFAULT_ALPHA:
            t += f"-a{_num(self.alpha)}"
        if self.student not in (None, "mlp_student"):
            t += f"-s{self.student}"
        if self.epochs is not None and not (self.student is None and self.epochs == SELF_EPOCHS):
            t += f"-e{self.epochs}"
        return t

    @classmethod
    def parse(cls, token: str):
        m = _KD.match(token)
        if not m:
            return None
        if m["self"] and m["s"]:
            raise ConfigError(f"{token!r}: kdself distills into the chain's current model and takes no "
                              f"-s<student>; write kd-t{m['t']}-s{m['s']} for a separate student")
        return cls(temperature=float(m["t"]), alpha=float(m["a"]) if m["a"] else DEFAULT_ALPHA,
                   student=None if m["self"] else (m["s"] or "mlp_student"),
                   epochs=int(m["e"]) if m["e"] else None)

    def needs_torch_module(self) -> str:
        return "distill"

    def default_allowed_drop(self) -> float:
        # A separate student's default depends on the dataset; the handler applies
        # student_drop(dataset) (see the module docstring).
        return 1.0


@dataclass(frozen=True)
class ScratchConfig(CompressionConfig):
    """The control for distillation: ``student`` trained from scratch with cross-entropy, the
    same recipe, epochs, seed and initial weights as a :class:`DistillConfig` student
    (``epochs=None``: the student's recipe epochs on the dataset)."""

    kind = "scratch"
    student: str = "mlp_student"
    epochs: int | None = None

    def __post_init__(self) -> None:
        if self.student is None:
            raise ConfigError("ScratchConfig needs a student model, e.g. student='mlp_student'")
        _check_student(self.student)
        if self.epochs is not None:
            _check_epochs(self.epochs)

    def token(self) -> str:
        return f"scratch-{self.student}" + (f"-e{self.epochs}" if self.epochs is not None else "")

    @classmethod
    def parse(cls, token: str):
        m = _SCRATCH.match(token)
        if not m:
            return None
        return cls(student=m["s"], epochs=int(m["e"]) if m["e"] else None)

    def needs_torch_module(self) -> str:
        return "train a scratch control against"

    def default_allowed_drop(self) -> float:
        return 1.0


# -- helpers -----------------------------------------------------------------------------------

def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, targets: torch.Tensor,
            temperature: float, alpha: float) -> torch.Tensor:
    """Hinton's loss: alpha * T^2 * KL(teacher_T || student_T) + (1 - alpha) * CE(student, y)."""
    t = float(temperature)
    soft = F.kl_div(F.log_softmax(student_logits / t, dim=1), F.log_softmax(teacher_logits / t, dim=1),
                    reduction="batchmean", log_target=True) * (t * t)
    if alpha >= 1.0:
        return soft
    return alpha * soft + (1.0 - alpha) * F.cross_entropy(student_logits, targets)


def teacher_logits(state: ChainState, teacher: nn.Module, teacher_key: dict) -> torch.Tensor:
    """Logits of ``teacher`` on the (normalised, unaugmented) training split, computed once per
    teacher and dataset and kept in the workbench cache."""
    data = state.data
    key = {"teacher": teacher_key, "dataset": data.fingerprint, "code": source_hash(teacher_logits),
           "train_threads": state.wb.train_threads, "versions": producer_versions(("torch",))}

    def build(tmp: Path) -> dict:
        state.wb.progress(f"teacher logits for {state.model_name}/{state.dataset_name} ({len(data.x_train)} images)")
        x = data.normalize(data.x_train)
        with state.wb.pinned_threads():
            logits = training.predict_logits(teacher.float(), x, channels_last=True).float().numpy()
        np.save(tmp / "logits.npy", logits)
        return {"shape": list(logits.shape)}

    entry = state.wb.cache.get_or_build("teacher_logits", key, build)
    logits = torch.from_numpy(np.load(entry / "logits.npy", allow_pickle=False))
    if logits.shape[0] != len(data.x_train):
        raise RuntimeError(f"teacher logits in {entry} have {logits.shape[0]} rows for "
                           f"{len(data.x_train)} training images")
    return logits


def fresh_student(name: str, state: ChainState, seed: int) -> tuple[nn.Module, dict]:
    """A registry model with seeded initial weights (the KD student and its scratch control match)."""
    data = state.data
    return training.init_model(name, data, seed), state.wb.arch_for(name, data)


def student_recipe(name: str, dataset: str, epochs: int | None, lr_scale: float,
                   config=None) -> training.TrainConfig:
    """The student's own recipe (its epochs unless given), unaugmented (teacher logits are of the
    plain images)."""
    base = recipe_for(name, dataset, config)
    return base.derived(epochs=base.epochs if epochs is None else epochs, lr=base.lr * lr_scale, augment=False)


def recipe_tag(what: str, tc: training.TrainConfig) -> str:
    """A cached_model tag that carries the resolved recipe, so a changed recipe is a new entry."""
    return f"{what} recipe={json.dumps(tc.as_dict(), sort_keys=True)}"


def _describe(model: nn.Module, arch: dict) -> dict:
    return {"model": arch["model"], "kwargs": dict(arch.get("kwargs", {})), "params": count_params(model)}


# -- handlers ----------------------------------------------------------------------------------

@register_handler(DistillConfig)
def apply_distill(cfg: DistillConfig, state: ChainState) -> ChainState:
    if cfg.student is None:
        base = state.wb.baseline(state.model_name, state.dataset_name)
        teacher, t_arch, t_key, t_what = base.model, base.arch, base.key, "fp32 baseline of the row"
        student, s_arch = copy.deepcopy(state.model), state.arch
        own = recipe_for(s_arch["model"], state.dataset_name, state.wb.config)
        tc = own.derived(epochs=cfg.epochs, lr=own.lr * cfg.lr_scale, augment=False, schedule="cosine")
    else:
        teacher, t_arch, t_key, t_what = state.model, state.arch, state.key, "the chain's current model"
        tc = student_recipe(cfg.student, state.dataset_name, cfg.epochs, cfg.lr_scale, state.wb.config)
        student, s_arch = fresh_student(cfg.student, state, tc.seed)
    soft = teacher_logits(state, teacher, t_key)

    def loss_fn(model: nn.Module, xb: torch.Tensor, yb: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        return kd_loss(model(xb).float(), soft[idx], yb, cfg.temperature, cfg.alpha)

    def build(m: nn.Module) -> dict:
        s = training.fit(m, state.data, tc, loss_fn=loss_fn, after_step=keep_zeros(m),
                         progress=state.wb.progress, label=f"{state.model_name}/{state.dataset_name}/{cfg.token()}")
        return {"recipe": tc.as_dict(), "epoch_losses": s["epoch_losses"], "train_seconds": s["train_seconds"]}

    model, meta = state.cached_model(recipe_tag("distill", tc), cfg, build, model=student, arch=s_arch)
    state.model, state.arch = model, s_arch
    if cfg.student is not None and cfg.allowed_drop_pp is None:
        state.allowed_drop_pp = max(state.allowed_drop_pp, student_drop(state.dataset_name, state))
    state.facts["distill"] = {
        "temperature": cfg.temperature, "alpha": cfg.alpha, "epochs": tc.epochs,
        "student": _describe(model, s_arch), "student_is": "new model" if cfg.student else "the chain's current model",
        "teacher": {**_describe(teacher, t_arch), "is": t_what},
        "train": meta,
    }
    return state


@register_handler(ScratchConfig)
def apply_scratch(cfg: ScratchConfig, state: ChainState) -> ChainState:
    """Train the student alone, through the engine's train-and-cache path like any baseline
    (same seeded initial weights as the KD student). Cached by student, dataset and recipe
    (not by the row's teacher), so every teacher row of a dataset shares one control."""
    tc = student_recipe(cfg.student, state.dataset_name, cfg.epochs, 1.0, state.wb.config)
    trained = state.wb.train(cfg.student, state.dataset_name, tc, tag="scratch")
    student, s_arch = copy.deepcopy(trained.model).eval(), dict(trained.arch)
    state.model, state.arch = student, s_arch
    if cfg.allowed_drop_pp is None:
        state.allowed_drop_pp = max(state.allowed_drop_pp, student_drop(state.dataset_name, state, "scratch"))
    state.facts["scratch"] = {"student": _describe(student, s_arch), "epochs": tc.epochs,
                              "train": {"recipe": tc.as_dict(), **trained.facts.get("train", {})}}
    return state
