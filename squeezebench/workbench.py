"""The engine's front door: dataset -> trained baseline -> variant -> artifact -> session ->
evaluation. Everything is memoised in memory for a session and cached on disk by content."""
from __future__ import annotations

import hashlib
import inspect
import logging
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
from torch import nn

from models import create_model, model_entry
from squeezebench import artifacts as art
from squeezebench import encoding
from squeezebench import training
from squeezebench.backends import Artifact, Backend, BackendUnavailable, Session, get_backend
from squeezebench.cache import ArtifactCache
from squeezebench.data import Dataset, load_dataset
from squeezebench.metrics import count_macs, count_nonzero, count_params
from squeezebench.recipes import recipe_for
from squeezebench.settings import Settings

log = logging.getLogger(__name__)
Progress = Callable[[str], None]


def source_hash(*objs) -> str:
    """Hash of the source code of modules/functions: part of cache keys so code changes rebuild."""
    h = hashlib.sha256()
    for o in objs:
        path = o if isinstance(o, Path) else Path(inspect.getsourcefile(o) or "")
        h.update(path.read_bytes())
    return h.hexdigest()[:12]


@dataclass
class Variant:
    """A model ready to export: what it is, how it was made, and its static facts."""

    model_name: str
    dataset_name: str
    variant_id: str
    model: nn.Module  # the torch module that defines the variant's function (eval mode)
    arch: dict  # enough to rebuild ``model``'s structure: model, in_shape, num_classes, kwargs, dtype
    key: dict  # content key parts: whatever the variant was built from
    chain: list[dict] = field(default_factory=list)
    facts: dict = field(default_factory=dict)  # technique facts for extra_info
    # Formats this variant writes itself (e.g. a QDQ ONNX); others are exported from ``model``.
    writers: dict[str, Callable[[Path], str]] = field(default_factory=dict)
    formats: tuple[str, ...] = ("torch", "onnx", "openvino")
    qweights: dict | None = None  # int8 weights chosen by a quantize step (see compression.base)
    # Backends that cannot run this variant, with the reason (the bench fixture skips them).
    # A compression step declares them in ``facts["unsupported_backends"]``.
    unsupported: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.unsupported = {**self.facts.get("unsupported_backends", {}), **self.unsupported}

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


@dataclass(frozen=True)
class Evaluation:
    top1: float  # percent, through the backend, full test set
    n_images: int
    parity_agreement: float  # fraction of top-1 predictions equal to the reference's
    max_abs_logit_diff: float


class Workbench:
    """Builds and memoises everything a benchmark needs; safe to share across a pytest session."""

    def __init__(self, settings: Settings, progress: Progress | None = None):
        self.settings = settings
        self.cache = ArtifactCache(settings.cache_dir)
        self.progress = progress or (lambda msg: None)
        self._datasets: dict[str, Dataset] = {}
        self._variants: dict[tuple, Variant] = {}
        self._artifacts: dict[tuple, Artifact] = {}
        self._sessions: dict[tuple, Session] = {}
        self._evals: dict[tuple, Evaluation] = {}
        self._reference: dict[tuple, np.ndarray] = {}

    # -- training -----------------------------------------------------------------------------
    @property
    def train_threads(self) -> int:
        """Intra-op threads for every training and fine-tuning run; part of each trained cache key,
        because conv training on CPU is bit-reproducible only at a fixed thread count."""
        return self.settings.threads

    @contextmanager
    def pinned_threads(self) -> Iterator[None]:
        """Run the block with torch at ``train_threads`` intra-op threads (restored after): a
        backend loaded earlier in the process must not decide how a model is trained."""
        before = torch.get_num_threads()
        torch.set_num_threads(self.train_threads)
        try:
            yield
        finally:
            torch.set_num_threads(before)

    # -- data -------------------------------------------------------------------------------
    def dataset(self, name: str) -> Dataset:
        if name not in self._datasets:
            s = self.settings
            self.progress(f"loading dataset {name} from {s.data_dir}")
            self._datasets[name] = load_dataset(name, s.data_dir, s.cache_dir, download=s.download)
        return self._datasets[name]

    # -- baselines --------------------------------------------------------------------------
    def arch_for(self, model_name: str, data: Dataset, **kwargs) -> dict:
        return {"model": model_name, "in_shape": list(data.in_shape), "num_classes": data.num_classes,
                "kwargs": kwargs, "dtype": "float32"}

    def train(
        self, model_name: str, dataset_name: str, cfg: training.TrainConfig | None = None,
        *, tag: str = "baseline", loss_fn_factory: Callable[[Dataset], training.LossFn] | None = None,
        extra_key: dict | None = None, model_kwargs: dict | None = None,
    ) -> Variant:
        """Train (or load from cache) ``model_name`` on ``dataset_name`` with ``cfg``."""
        data = self.dataset(dataset_name)
        cfg = cfg or recipe_for(model_name, dataset_name)
        arch = self.arch_for(model_name, data, **(model_kwargs or {}))
        key = {
            "what": tag, "arch": arch, "dataset": data.fingerprint, "recipe": cfg.as_dict(),
            "code": source_hash(model_entry(model_name).source_file, training.fit),
            "train_threads": self.train_threads,
            **(extra_key or {}),
        }

        def build(tmp: Path) -> dict:
            self.progress(f"training {model_name} on {dataset_name} ({tag}, {cfg.epochs} epochs)")
            model = training.init_model(model_name, data, cfg.seed, **(model_kwargs or {}))
            loss_fn = loss_fn_factory(data) if loss_fn_factory else None
            with self.pinned_threads():
                summary = training.fit(model, data, cfg, loss_fn=loss_fn, progress=self.progress,
                                       label=f"{model_name}/{dataset_name}/{tag}")
            acc = training.top1(training.predict_logits(model, data.test_inputs()), data.y_test)
            self.progress(f"{model_name}/{dataset_name}/{tag}: top-1 {acc:.2f}% "
                          f"in {summary['train_seconds']:.0f}s")
            art.write_torch(model, arch, tmp)
            return {**summary, "torch_top1": acc}

        entry = self.cache.get_or_build("trained", key, build)
        model = create_model(model_name, data.in_shape, data.num_classes, **(model_kwargs or {}))
        model.load_state_dict(torch.load(entry / "model.pt", map_location="cpu", weights_only=True))
        meta = ArtifactCache.meta(entry)
        return Variant(model_name, dataset_name, "fp32", model.eval(), arch, key,
                       chain=[], facts={"train": {k: meta.get(k) for k in ("epochs", "train_seconds", "torch_top1")},
                                        "recipe": cfg.as_dict()})

    def baseline(self, model_name: str, dataset_name: str) -> Variant:
        k = (model_name, dataset_name, "fp32")
        if k not in self._variants:
            self._variants[k] = self.train(model_name, dataset_name)
        return self._variants[k]

    def variant(self, model_name: str, dataset_name: str, variant_id: str) -> Variant:
        """The variant named ``variant_id`` (``fp32`` is the trained baseline)."""
        k = (model_name, dataset_name, variant_id)
        if k not in self._variants:
            if variant_id == "fp32":
                return self.baseline(model_name, dataset_name)
            from squeezebench.compression import build_variant  # compression builds on baselines

            self._variants[k] = build_variant(self, model_name, dataset_name, variant_id)
        return self._variants[k]

    # -- artifacts and sessions -------------------------------------------------------------
    def artifact(self, v: Variant, fmt: str) -> Artifact:
        k = (v.model_name, v.dataset_name, v.variant_id, fmt)
        if k in self._artifacts:
            return self._artifacts[k]
        if fmt not in v.formats and fmt != "compressed":
            raise ValueError(f"variant {v.variant_id} has no {fmt} artifact (it has {', '.join(v.formats)})")
        key = {"variant": v.key, "format": fmt, "exporter": source_hash(art.write_onnx),
               "writer": source_hash(v.writers[fmt]) if fmt in v.writers else None}
        if fmt == "compressed":  # squeezebench.encoding's model.sqz: the honest compact size
            key["encoder"] = source_hash(encoding)

        def build(tmp: Path) -> dict:
            if fmt in v.writers:
                main = v.writers[fmt](tmp)
            elif fmt == "torch":
                main = art.write_torch(v.model, v.arch, tmp)
            elif fmt == "compressed":
                main = encoding.write_compressed(v, tmp)
            elif fmt == "onnx":
                main = art.write_onnx(v.model, v.in_shape, tmp, dtype=getattr(torch, v.arch["dtype"]))
            elif fmt == "openvino":
                onnx_art = self.artifact(v, "onnx")
                main = art.write_openvino(onnx_art.main, tmp)
            else:
                raise ValueError(f"unknown artifact format {fmt!r}")
            return {"main": main}

        entry = self.cache.get_or_build(f"artifacts/{fmt}", key, build)
        main = ArtifactCache.meta(entry)["main"]
        a = Artifact(fmt, entry / main, art.files_of(entry, main), meta=dict(v.facts.get("artifact_meta", {})))
        self._artifacts[k] = a
        return a

    def backend(self, backend_name: str) -> Backend:
        return get_backend(backend_name)(self.settings.threads)

    def session(self, v: Variant, backend_name: str) -> Session:
        k = (v.model_name, v.dataset_name, v.variant_id, backend_name)
        if k not in self._sessions:
            backend = self.backend(backend_name)
            reason = v.unsupported_reason(backend_name, backend.artifact_format)
            if reason:
                raise BackendUnavailable(reason)
            self._sessions[k] = backend.load(self.artifact(v, backend.artifact_format))
        return self._sessions[k]

    # -- evaluation -------------------------------------------------------------------------
    def reference_logits(self, v: Variant) -> np.ndarray:
        """Logits of the variant's own torch module, in-process: what every backend must agree with."""
        k = (v.model_name, v.dataset_name, v.variant_id)
        if k not in self._reference:
            data = self.dataset(v.dataset_name)
            x = data.test_inputs().to(getattr(torch, v.arch["dtype"]))
            self._reference[k] = training.predict_logits(v.model, x).double().numpy()
        return self._reference[k]

    def evaluate(self, v: Variant, backend_name: str) -> Evaluation:
        """Top-1 through ``backend_name`` on the full test set, and parity with the reference."""
        k = (v.model_name, v.dataset_name, v.variant_id, backend_name)
        if k not in self._evals:
            data = self.dataset(v.dataset_name)
            logits = self.session(v, backend_name).predict(data.test_inputs())
            ref = self.reference_logits(v)
            y = data.y_test.numpy()
            pred = logits.argmax(1)
            self._evals[k] = Evaluation(
                top1=float((pred == y).mean() * 100.0),
                n_images=len(y),
                parity_agreement=float((pred == ref.argmax(1)).mean()),
                max_abs_logit_diff=float(np.abs(logits - ref).max()),
            )
        return self._evals[k]

    def static_facts(self, v: Variant) -> dict:
        params = count_params(v.model)
        packed = self.artifact(v, "compressed")
        return {"params": params, "nonzero_params": count_nonzero(v.model),
                "macs": count_macs(v.model, v.in_shape),
                # Three labelled sizes per record: artifact_bytes (the backend's files, in the
                # record), compressed_bytes (model.sqz, see squeezebench.encoding), nonzero_params.
                "compressed_bytes": packed.nbytes,
                "compressed_encoding": encoding.describe(packed.main.read_bytes())["label"],
                # Not `bits_per_weight`: precision/quantize set that to the nominal storage
                # precision (16, 8), which reports multiply by nonzero_params.
                "compressed_bits_per_weight": packed.nbytes * 8 / params if params else None}


def guardrail_floor(wb: Workbench, v: Variant) -> tuple[float, str]:
    """The top-1 a record must reach: the pair's floor for baselines; for a compressed variant,
    its baseline's measured top-1 minus the drop its config allows."""
    from squeezebench.recipes import floor_for

    if v.variant_id == "fp32" or "allowed_drop_pp" not in v.facts:
        f = floor_for(v.model_name, v.dataset_name)
        return f, f"floor for {v.model_name} on {v.dataset_name}"
    base = wb.evaluate(wb.baseline(v.model_name, v.dataset_name), "torch-cpu").top1
    drop = float(v.facts["allowed_drop_pp"])
    return base - drop, f"fp32 baseline {base:.2f}% - allowed drop {drop:.2f} pp"
