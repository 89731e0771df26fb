"""Compression as configuration (torchao style): a frozen config dataclass says *what*,
a registered handler says *how*, and :func:`apply_chain` applies a list of configs in order.

A variant id is the chain's configs' ids joined by ``+`` (``kd-t4+prune80+int8-qat``);
:func:`parse_variant_id` turns it back into configs. Adding a technique is one module that
defines a config (with ``token``/``parse``), a handler registered with ``@register_handler``,
and a test.
"""
from __future__ import annotations

import copy
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Callable, ClassVar

from torch import nn

from squeezebench.domain import Engine, ExportSpec, Variant
from squeezebench.keys import source_hash


class ConfigError(ValueError):
    """A config or chain that cannot work; the message names the fix."""


@dataclass(frozen=True)
class CompressionConfig:
    """Base of every technique's config. Subclasses are frozen dataclasses."""

    kind: ClassVar[str] = "abstract"
    # Top-1 (percentage points) a variant may lose against its fp32 baseline; None = the
    # technique's documented default (see ``default_allowed_drop``).
    allowed_drop_pp: float | None = field(default=None, kw_only=True)

    def token(self) -> str:
        """This config's part of a variant id."""
        raise NotImplementedError

    @classmethod
    def parse(cls, token: str) -> "CompressionConfig | None":
        """The config a variant-id token names, or None if the token is not this technique's."""
        return None

    def default_allowed_drop(self) -> float:
        return 1.0

    def needs_torch_module(self) -> str | None:
        """What this step does that needs the model's torch module ("prune/fine-tune"), or None
        for a step each runtime can apply to an exported file (fp16, post-training int8); a
        variant of an ``onnx:`` file skips the former with this reason."""
        return None

    def drop(self) -> float:
        return self.default_allowed_drop() if self.allowed_drop_pp is None else self.allowed_drop_pp

    def as_dict(self) -> dict:
        return {"kind": self.kind, **{f.name: getattr(self, f.name) for f in fields(self)}}


@dataclass
class ChainState:
    """What flows through a chain: the torch model so far, plus everything learned on the way."""

    wb: Engine
    model_name: str
    dataset_name: str
    model: nn.Module
    arch: dict
    key: dict
    chain: list[dict] = field(default_factory=list)
    facts: dict = field(default_factory=dict)
    # What the exporters write (dtype, quantization): declared by a terminal step, runtime-free.
    export: ExportSpec = field(default_factory=ExportSpec)
    allowed_drop_pp: float = 0.0
    # Integer weights a quantize step settled on, for the compact encoding:
    # {param name: {"values": int8 ndarray, "scale": float32 ndarray, "zero_point": int ndarray, "axis": int|None}}
    qweights: dict | None = None

    @property
    def data(self):
        return self.wb.dataset(self.dataset_name)

    def cached_model(self, tag: str, cfg: CompressionConfig, build: Callable[[nn.Module], dict | None],
                     model: nn.Module | None = None, arch: dict | None = None,
                     producers: tuple[str, ...] = ("torch",)) -> tuple[nn.Module, dict]:
        """Run ``build(model)`` (which changes the model in place, e.g. fine-tuning) once per
        content key, through the engine's one train-and-cache path; later calls load the cached
        state_dict into a fresh copy. ``producers``: the libraries besides the trainer whose
        code decides the weights (e.g. torch-pruning for structured pruning).

        Returns the model and the metadata ``build`` returned."""
        model = model if model is not None else self.model
        arch = arch if arch is not None else self.arch
        key = {"after": self.key, "step": cfg.as_dict(), "tag": tag, "arch": arch,
               "code": source_hash(type(cfg), Path(__file__))}
        return self.wb.train_cached("variants", key, copy.deepcopy(model), arch, build, producers=producers)


Handler = Callable[[CompressionConfig, ChainState], ChainState]
_HANDLERS: dict[type, Handler] = {}
_CONFIG_TYPES: list[type[CompressionConfig]] = []


def register_handler(config_type: type[CompressionConfig]):
    """Register ``fn(config, state) -> state`` as how ``config_type`` is applied."""

    def deco(fn: Handler) -> Handler:
        _HANDLERS[config_type] = fn
        if config_type not in _CONFIG_TYPES:
            _CONFIG_TYPES.append(config_type)
        return fn

    return deco


def config_types() -> list[type[CompressionConfig]]:
    return list(_CONFIG_TYPES)


def parse_token(token: str) -> CompressionConfig:
    for t in _CONFIG_TYPES:
        cfg = t.parse(token)
        if cfg is not None:
            return cfg
    raise ConfigError(f"unknown variant token {token!r}; see README 'Variant ids' for the grammar")


def parse_variant_id(variant_id: str) -> list[CompressionConfig]:
    """``kd-t4+prune80+int8-qat`` -> [DistillConfig(...), PruneConfig(...), QuantizeConfig(...)]."""
    if variant_id in ("", "fp32"):
        return []
    chain = [parse_token(tok) for tok in variant_id.split("+")]
    validate_chain(chain)
    return chain


def variant_id(chain: list[CompressionConfig]) -> str:
    return "+".join(c.token() for c in chain) or "fp32"


# Rules on order: a config may declare the kinds that must not come after it (e.g. nothing
# float-trainable after int8), checked here so every handler need not repeat it.
TERMINAL_KINDS = {"quantize", "precision"}


def validate_chain(chain: list[CompressionConfig]) -> None:
    kinds = [c.kind for c in chain]
    for k in set(kinds):
        if k in TERMINAL_KINDS and kinds.count(k) > 1:
            raise ConfigError(f"a chain can quantize or change precision once; got {kinds.count(k)} "
                              f"{k} steps in {variant_id(chain)!r}: keep one")
    for cfg in chain[:-1]:
        if cfg.kind in TERMINAL_KINDS:
            raise ConfigError(
                f"{cfg.token()!r} must be the last step of a chain (it changes the number format "
                f"that later steps would train or prune); move it to the end: "
                f"{'+'.join(c.token() for c in chain if c is not cfg)}+{cfg.token()}")


def allowed_drop(cfg: CompressionConfig, state: ChainState) -> float:
    """The top-1 drop a step allows: its config's explicit ``allowed_drop_pp``, else the user's
    ``allowed-drop`` for its kind (``[tool.squeezebench]``, for the row's model and dataset), else
    the technique's documented default."""
    if cfg.allowed_drop_pp is None:
        user = getattr(state.wb, "config", None)
        pp = user.allowed_drop(cfg.kind, state.model_name, state.dataset_name) if user is not None else None
        if pp is not None:
            return pp
    return cfg.drop()


def apply_chain(state: ChainState, chain: list[CompressionConfig]) -> ChainState:
    """Apply each config's handler in order; the one entry point for every technique."""
    validate_chain(chain)
    for cfg in chain:
        handler = _HANDLERS.get(type(cfg))
        if handler is None:
            raise ConfigError(f"no handler registered for {type(cfg).__name__}")
        state = handler(cfg, state)
        state.chain.append(cfg.as_dict())
        # The handler's code is part of what the variant is: a changed handler must not be
        # served a stale artifact.
        state.key = {"after": state.key, "step": cfg.as_dict(), "code": source_hash(type(cfg))}
        state.allowed_drop_pp = max(state.allowed_drop_pp, allowed_drop(cfg, state))
    return state


def build_variant(wb: Engine, model_name: str, dataset_name: str, vid: str) -> Variant:
    """The variant ``vid`` of the trained baseline of ``model_name`` on ``dataset_name``."""
    chain = parse_variant_id(vid)
    base = wb.baseline(model_name, dataset_name)
    state = ChainState(wb, model_name, dataset_name, copy.deepcopy(base.model), dict(base.arch),
                       key=dict(base.key))
    state = apply_chain(state, chain)
    facts = {**state.facts, "allowed_drop_pp": state.allowed_drop_pp}
    return Variant(state.model_name, dataset_name, variant_id(chain), state.model.eval(), state.arch,
                   state.key, chain=state.chain, facts=facts, export=state.export, qweights=state.qweights)


def token_regex(pattern: str) -> re.Pattern:
    return re.compile(rf"^{pattern}$")
