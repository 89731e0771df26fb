"""The domain types every layer speaks: a variant, an artifact, an evaluation, and what a
compression step may ask of the engine that builds it. At the bottom of the import graph:
this module imports nothing of squeezebench's, so engine, backends, compression and the
pytest plugin can all depend on it without depending on each other."""
from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol

import torch
from torch import nn


@dataclass(frozen=True)
class Artifact:
    """Files a backend loads. ``files`` lists every one of them (for honest byte counts)."""

    format: str  # an exporter's format (torch, onnx, openvino, ...) or the engine's compressed
    main: Path
    files: tuple[Path, ...]
    meta: dict = field(default_factory=dict, compare=False, hash=False)

    @property
    def nbytes(self) -> int:
        return sum(p.stat().st_size for p in self.files)


@dataclass(frozen=True, eq=False)
class QuantSpec:
    """An int8 variant, declared for every runtime to quantize itself: the method, the weights'
    granularity and the data each method takes. Names no runtime; each backend's exporter turns it
    into its own int8 artifact (see ``squeezebench.backends``)."""

    method: str  # static | dynamic | qat
    per_channel: bool  # one weight scale per output channel (symmetric int8), else one per tensor
    label: str = ""  # the step's variant token (``int8-static-cal64-pt``): what a session says was requested
    calibration: torch.Tensor | None = None  # static: normalised training images, the same for every runtime
    qat_model: nn.Module | None = None  # qat: the fine-tuned fake-quant model; its grid is what gets exported


@dataclass(frozen=True)
class WeightOnlySpec:
    """Weight-only quantization, declared for the runtimes that run it: the Linear (MatMul)
    weights stored on ``bits`` bits, symmetric, one scale per ``group_size`` consecutive inputs of
    each output; activations stay float. Names no runtime: a backend whose runtime has no such
    kernels says so in ``support_reason``."""

    bits: int
    group_size: int
    label: str = ""  # the step's variant token (``woq4-g32``)


@dataclass(frozen=True, eq=False)
class ExportSpec:
    """What a variant is, for the exporters: its number format and, for int8, its quantization.
    A compression step says *what* it produced here; *how* a runtime stores it is the backend's."""

    dtype: str = "float32"  # what the variant computes in: float32, float64, float16, bfloat16
    # The fp32 model before a precision cast or quantization, for runtimes that store or quantize
    # their own way from it (None: the variant's model is that model).
    float_model: nn.Module | None = None
    quantization: QuantSpec | None = None
    # Weight-only quantization of the MatMul weights (the float model in ``float_model``); every
    # runtime that runs it quantizes ``float_model`` with its own tool.
    weight_only: WeightOnlySpec | None = None
    # An exported model file (ONNX: ``--sb-models onnx:<path>``) the runtimes' artifacts start
    # from instead of a torch module: written by the exporters registered for files
    # (``squeezebench.backends.base.register_file_exporter``); the variant then has no torch model.
    source_file: Path | None = None


@dataclass
class Variant:
    """A model ready to export: what it is, how it was made, and its static facts."""

    model_name: str
    dataset_name: str
    variant_id: str
    # The torch module that defines the variant's function (eval mode); None for a variant of an
    # exported file (``export.source_file``): every torch-only use is guarded by that.
    model: nn.Module | None
    arch: dict  # enough to rebuild ``model``'s structure: model, in_shape, num_classes, kwargs, dtype
    key: dict  # content key parts: whatever the variant was built from
    chain: list[dict] = field(default_factory=list)
    facts: dict = field(default_factory=dict)  # technique facts for extra_info
    export: ExportSpec = field(default_factory=ExportSpec)  # what the exporters write (runtime-free)
    # The artifact formats some backend can run this variant in, and the backends that cannot,
    # with the reason (the bench fixture skips them): both asked of the backends by the engine
    # (``Workbench.variant``), never declared by a compression step.
    formats: tuple[str, ...] = ("torch", "onnx", "openvino")
    unsupported: dict[str, str] = field(default_factory=dict)
    qweights: dict | None = None  # int8 weights chosen by a quantize step (see compression.base)

    def unsupported_reason(self, backend_name: str, artifact_format: str) -> str | None:
        """Why ``backend_name`` (which loads ``artifact_format``) cannot run this variant, or None."""
        if backend_name in self.unsupported:
            return self.unsupported[backend_name]
        if artifact_format not in self.formats:
            return f"variant {self.variant_id} has no {artifact_format} artifact (it has {', '.join(self.formats)})"
        return None

    @property
    def in_shape(self) -> tuple[int, int, int]:
        return tuple(self.arch["in_shape"])  # type: ignore[return-value]


class VariantUnavailable(Exception):
    """A variant its model cannot give (e.g. pruning an exported file, which has no torch module to
    fine-tune): not an error, the benchmark skips with this message as the reason."""


@dataclass(frozen=True)
class Evaluation:
    top1: float  # percent, through the backend, full test set
    n_images: int
    parity_agreement: float  # fraction of top-1 predictions equal to the reference's
    max_abs_logit_diff: float
    # "measured in this run", or where a cached evaluation came from (Workbench.evaluate's key)
    source: str = "measured in this run"


class Engine(Protocol):
    """What compression handlers may ask of the engine (``squeezebench.workbench.Workbench``)."""

    cache: Any
    progress: Callable[[str], None]
    config: Any  # squeezebench.config.Config: the user's [tool.squeezebench] settings

    @property
    def train_threads(self) -> int: ...

    def pinned_threads(self) -> AbstractContextManager[None]: ...

    def dataset(self, name: str) -> Any: ...

    def arch_for(self, model_name: str, data: Any, **kwargs: Any) -> dict: ...

    def baseline(self, model_name: str, dataset_name: str) -> Variant: ...

    def train(self, model_name: str, dataset_name: str, cfg: Any = None, *, tag: str = "baseline",
              **kwargs: Any) -> Variant: ...

    def train_cached(self, namespace: str, key: dict, model: nn.Module, arch: dict,
                     run: Callable[[nn.Module], dict | None], *,
                     producers: tuple[str, ...] = ("torch",)) -> tuple[nn.Module, dict]: ...
