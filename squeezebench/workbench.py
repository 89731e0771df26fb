"""The engine's front door: dataset -> trained baseline -> variant -> artifact -> session ->
evaluation. Everything is memoised in memory for a session and cached on disk by content."""
from __future__ import annotations

import dataclasses
import json
import logging
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
from torch import nn

from squeezebench.models import model_entry
from squeezebench.models import onnx_file
from squeezebench import encoding, exported
from squeezebench import checkpoints, machine, training
from squeezebench.backends import (
    Artifact, Backend, BackendUnavailable, Exporter, Session, exporter_for, get_backend, support,
)
from squeezebench.backends.torch_backend import write_torch
from squeezebench.cache import ArtifactCache
from squeezebench.compression import build_variant
from squeezebench.config import Config
from squeezebench.data import Dataset, load_dataset
from squeezebench.domain import Evaluation, Variant
from squeezebench.keys import produced_by, producer_versions, producers_of, source_hash
from squeezebench.metrics import count_macs, count_nonzero, count_params
from squeezebench.recipes import floor_for, recipe_for
from squeezebench.settings import Settings

log = logging.getLogger(__name__)
Progress = Callable[[str], None]


__all__ = ["Evaluation", "Variant", "Workbench", "guardrail_floor", "source_hash"]

@produced_by("numpy", "constriction")  # squeezebench.encoding: numpy, the stdlib, the range coder
def _write_compressed(v: Variant, out: Path) -> str:
    return encoding.write_compressed(v, out)


class CompressedExporter(Exporter):
    """``model.sqz`` (squeezebench.encoding): the honest compact size of every variant. The
    engine's own format, no backend loads it; every other format is its backend's exporter's."""

    format = "compressed"

    def writer(self, v: Variant):
        return _write_compressed

    def code(self) -> tuple:
        return (encoding,)


COMPRESSED = CompressedExporter()


@produced_by("numpy", "constriction", "onnx")  # the onnx package reads the initializers
def _write_compressed_file(v: Variant, out: Path) -> str:
    state = onnx_file.initializer_state(v.export.source_file, v.export.dtype)
    (out / "model.sqz").write_bytes(encoding.encode_tensors(encoding.stored_tensors(state, v.qweights)))
    return "model.sqz"


class CompressedFileExporter(CompressedExporter):
    """``model.sqz`` of a variant of an exported file: the same encoding of the file's initializers
    (f16 for fp16; the int8 weights of ``qweights`` for int8) instead of a torch state_dict."""

    def writer(self, v: Variant):
        return _write_compressed_file

    def code(self) -> tuple:
        return (encoding, onnx_file)


COMPRESSED_FILE = CompressedFileExporter()


class Workbench:
    """Builds and memoises everything a benchmark needs; safe to share across a pytest session."""

    def __init__(self, settings: Settings, progress: Progress | None = None, config: Config | None = None):
        self.settings = settings
        self.config = config or Config()  # the user's [tool.squeezebench] settings
        # A shared store (settings.shared_cache) is probed here: unreachable or read-only is one
        # SharedCacheError before any work.
        self.cache = ArtifactCache(settings.cache_dir, shared=settings.shared_cache,
                                   shared_read_only=settings.shared_read_only)
        self.progress = progress or (lambda msg: None)
        self._datasets: dict[str, Dataset] = {}
        self._variants: dict[tuple, Variant] = {}
        self._artifacts: dict[tuple, Artifact] = {}
        self._sessions: dict[tuple, Session] = {}
        self._evals: dict[tuple, Evaluation] = {}
        self._reference: dict[tuple, np.ndarray] = {}
        # model spec -> user checkpoint loaded instead of training its baseline (--sb-checkpoint)
        self.checkpoints: dict[str, Path] = {}

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
            if ":" in name and not name.startswith("folder:"):  # a user callable: say what it gave
                self.progress(f"dataset {name}: {self._datasets[name].source}")
        return self._datasets[name]

    # -- baselines --------------------------------------------------------------------------
    def arch_for(self, model_name: str, data: Dataset, **kwargs) -> dict:
        return {"model": model_name, "in_shape": list(data.in_shape), "num_classes": data.num_classes,
                "kwargs": kwargs, "dtype": "float32"}

    def trained_key(self, key: dict, producers: tuple[str, ...] = ("torch",)) -> dict:
        """``key`` plus what every trained entry is keyed on (see :meth:`train_cached`)."""
        return {**key, "trainer": source_hash(training), "train_threads": self.train_threads,
                "versions": producer_versions(producers)}

    def train_cached(self, namespace: str, key: dict, model: nn.Module, arch: dict,
                     run: Callable[[nn.Module], dict | None], *,
                     producers: tuple[str, ...] = ("torch",)) -> tuple[nn.Module, dict]:
        """The one train-and-cache path: ``run(model)`` trains ``model`` in place (at
        ``train_threads``, pinned) unless the entry for ``key`` exists; either way ``model`` ends
        up holding the cached weights. Every trained entry's key holds the training code, the
        thread count and the producers' versions, so a rule added here holds for all of them.

        Returns the model (eval mode) and the metadata ``run`` returned."""
        full_key = self.trained_key(key, producers)
        built: list[bool] = []

        def build(tmp: Path) -> dict:
            with self.pinned_threads():
                meta = run(model) or {}
            write_torch(model, arch, tmp)
            built.append(True)
            return meta

        entry = self.cache.get_or_build(namespace, full_key, build)
        if not built:
            model.load_state_dict(torch.load(entry / "model.pt", map_location="cpu", weights_only=True))
        return model.eval(), ArtifactCache.meta(entry)

    def train(
        self, model_name: str, dataset_name: str, cfg: training.TrainConfig | None = None,
        *, tag: str = "baseline", loss_fn_factory: Callable[[Dataset], training.LossFn] | None = None,
        extra_key: dict | None = None, model_kwargs: dict | None = None,
    ) -> Variant:
        """Train (or load from cache) ``model_name`` on ``dataset_name`` with ``cfg``, from its
        seeded initial weights; a baseline with a user checkpoint is loaded from it instead."""
        if tag == "baseline" and model_name in self.checkpoints and loss_fn_factory is None:
            return self.from_checkpoint(model_name, dataset_name, self.checkpoints[model_name], model_kwargs)
        data = self.dataset(dataset_name)
        cfg = cfg or recipe_for(model_name, dataset_name, self.config)
        arch = self.arch_for(model_name, data, **(model_kwargs or {}))
        key = {"what": tag, "arch": arch, "dataset": data.fingerprint, "recipe": cfg.as_dict(),
               "code": model_entry(model_name).code_fingerprint, **(extra_key or {})}

        def run(model: nn.Module) -> dict:
            self.progress(f"training {model_name} on {dataset_name} ({tag}, {cfg.epochs} epochs)")
            loss_fn = loss_fn_factory(data) if loss_fn_factory else None
            summary = training.fit(model, data, cfg, loss_fn=loss_fn, progress=self.progress,
                                   label=f"{model_name}/{dataset_name}/{tag}")
            acc = training.top1(training.predict_logits(model, data.test_inputs()), data.y_test)
            self.progress(f"{model_name}/{dataset_name}/{tag}: top-1 {acc:.2f}% "
                          f"in {summary['train_seconds']:.0f}s")
            return {**summary, "torch_top1": acc}

        model = training.init_model(model_name, data, cfg.seed, **(model_kwargs or {}))
        model, meta = self.train_cached("trained", key, model, arch, run)
        return self._ask_backends(Variant(
            model_name, dataset_name, "fp32", model, arch, self.trained_key(key), chain=[],
            facts={"train": {k: meta.get(k) for k in ("epochs", "train_seconds", "torch_top1")},
                   "recipe": cfg.as_dict()}))

    def from_checkpoint(self, model_name: str, dataset_name: str, path: Path,
                        model_kwargs: dict | None = None) -> Variant:
        """The fp32 baseline with the user's weights from ``path`` (squeezebench.checkpoints):
        nothing is trained; the key holds the file's sha256 instead of a recipe."""
        data = self.dataset(dataset_name)
        arch = self.arch_for(model_name, data, **(model_kwargs or {}))
        digest = checkpoints.sha256_of(path)
        key = {"what": "baseline", "arch": arch, "dataset": data.fingerprint,
               "code": model_entry(model_name).code_fingerprint, "checkpoint": digest,
               "versions": producer_versions(("torch",))}
        self.progress(f"loading checkpoint {path} for {model_name} (sha256 {digest[:12]}): not training")
        model = training.init_model(model_name, data, 0, **(model_kwargs or {}))
        checkpoints.load_into(model, path, model_name, data.in_shape, data.num_classes)
        acc = training.top1(training.predict_logits(model.eval(), data.test_inputs()), data.y_test)
        self.progress(f"{model_name}/{dataset_name}/checkpoint: top-1 {acc:.2f}%")
        return self._ask_backends(Variant(
            model_name, dataset_name, "fp32", model, arch, key, chain=[],
            facts={"train": {"epochs": 0, "train_seconds": 0.0, "torch_top1": acc},
                   "checkpoint": {"path": str(path), "sha256": digest}, "recipe": None}))

    def baseline(self, model_name: str, dataset_name: str) -> Variant:
        k = (model_name, dataset_name, "fp32")
        if k not in self._variants:
            if onnx_file.is_onnx_spec(model_name):  # an exported file: its weights, not trained
                self._variants[k] = self._ask_backends(exported.file_baseline(self, model_name, dataset_name))
            else:
                self._variants[k] = self.train(model_name, dataset_name)
        return self._variants[k]

    def variant(self, model_name: str, dataset_name: str, variant_id: str) -> Variant:
        """The variant named ``variant_id`` (``fp32`` is the trained baseline). Of an exported file
        (``onnx:<path>``), the runtime-side variants only: for any other,
        :class:`~squeezebench.domain.VariantUnavailable` says why (its benchmarks skip)."""
        k = (model_name, dataset_name, variant_id)
        if k not in self._variants:
            if onnx_file.is_onnx_spec(model_name):
                v = exported.file_variant(self, model_name, dataset_name, variant_id)
                self._variants[k] = v if v.variant_id == "fp32" else self._ask_backends(v)
                return self._variants[k]
            if variant_id == "fp32":
                return self.baseline(model_name, dataset_name)
            self._variants[k] = self._ask_backends(build_variant(self, model_name, dataset_name, variant_id))
        return self._variants[k]

    @staticmethod
    def _ask_backends(v: Variant) -> Variant:
        """What the backends say about ``v``: the formats it has (some backend runs them), the
        backends that cannot run it with the reason (also a fact of its records), and how each
        format's int8 artifact is made."""
        v.formats, v.unsupported = support(v)
        if v.unsupported:
            v.facts["unsupported_backends"] = dict(v.unsupported)
        quant = v.facts.get("quantization") or v.facts.get("weight_only")
        if (v.export.quantization is not None or v.export.weight_only is not None) and isinstance(quant, dict):
            quant["tools"] = {fmt: tool for fmt in v.formats if (tool := exporter_for(v, fmt).tool(v))}
        return v

    # -- artifacts and sessions -------------------------------------------------------------
    def artifact(self, v: Variant, fmt: str) -> Artifact:
        """``v``'s artifact in format ``fmt``, written by the exporter its backend registered (or
        the engine's compact encoding for ``compressed``); cached under the variant's key, the
        exporter's code and the versions of the libraries its writer names."""
        k = (v.model_name, v.dataset_name, v.variant_id, fmt)
        if k in self._artifacts:
            return self._artifacts[k]
        if fmt == COMPRESSED.format:
            exporter: Exporter = COMPRESSED if v.export.source_file is None else COMPRESSED_FILE
        elif fmt not in v.formats:
            raise ValueError(f"variant {v.variant_id} has no {fmt} artifact (it has {', '.join(v.formats)})")
        else:
            exporter = exporter_for(v, fmt)
        write = exporter.writer(v)
        key = {"variant": v.key, "format": fmt, "exporter": source_hash(*exporter.code()),
               "versions": producer_versions(producers_of(write, ()))}
        entry = self.cache.get_or_build(f"artifacts/{fmt}", key, lambda tmp: {"main": write(v, tmp)})
        main = ArtifactCache.meta(entry)["main"]
        q = v.export.quantization
        meta = {"dtype": v.export.dtype, **({"quantization": q.label} if q is not None else {})}
        a = Artifact(fmt, entry / main, exporter.files(entry, main), meta=meta)
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
        """Logits of the variant's own torch module, in-process: what every backend must agree with.
        A variant of an exported file has none: its reference is the fp32 file run by ONNX Runtime."""
        k = (v.model_name, v.dataset_name, v.variant_id)
        if k not in self._reference:
            data = self.dataset(v.dataset_name)
            if v.model is None:
                base = self.baseline(v.model_name, v.dataset_name)
                self._reference[k] = self.session(base, exported.REFERENCE_BACKEND).predict(data.test_inputs())
            else:
                x = data.test_inputs().to(getattr(torch, v.arch["dtype"]))
                self._reference[k] = training.predict_logits(v.model, x).double().numpy()
        return self._reference[k]

    def evaluation_key(self, v: Variant, backend_name: str) -> dict:
        """What an evaluation's numbers depend on: the artifact, the runtime and its version, the
        CPU (kernels and even precisions follow the ISA), the threads and device, the test set, and
        this code. Same key, same logits: a warm run reads them instead of re-running the test set."""
        session = self.session(v, backend_name)
        fmt = self.backend(backend_name).artifact_format
        return {"variant": v.key, "backend": backend_name, "artifact": self.artifact(v, fmt).main.parent.name,
                "device": session.device_name, "threads": session.threads, "cpu": machine.cpu_identity(),
                "versions": machine.library_versions(), "dataset": self.dataset(v.dataset_name).fingerprint,
                "code": source_hash(Workbench.evaluate, Workbench.reference_logits, Workbench._measure_evaluation,
                                    training.predict_logits, type(session), Session.predict)}

    def evaluate(self, v: Variant, backend_name: str) -> Evaluation:
        """Top-1 through ``backend_name`` on the full test set, and parity with the reference;
        cached on disk under :meth:`evaluation_key` (the record's ``evaluation_source`` says so)."""
        k = (v.model_name, v.dataset_name, v.variant_id, backend_name)
        if k in self._evals:
            return self._evals[k]
        measured: list[Evaluation] = []

        def build(tmp: Path) -> dict:
            e = self._measure_evaluation(v, backend_name)
            measured.append(e)
            fields = dataclasses.asdict(e)
            (tmp / "evaluation.json").write_text(json.dumps(fields, sort_keys=True))
            return fields

        key = self.evaluation_key(v, backend_name)
        entry = self.cache.get_or_build("evaluations", key, build)
        if measured:
            self._evals[k] = measured[0]
        else:  # read back from the verified file (the manifest checks its hash), not the manifest's copy
            fields = json.loads((entry / "evaluation.json").read_text())
            fields["source"] = f"cached: evaluations/{entry.name} (same artifact, runtime versions, CPU, threads)"
            self._evals[k] = Evaluation(**fields)
        return self._evals[k]

    def _measure_evaluation(self, v: Variant, backend_name: str) -> Evaluation:
        data = self.dataset(v.dataset_name)
        logits = self.session(v, backend_name).predict(data.test_inputs())
        ref = self.reference_logits(v)
        y = data.y_test.numpy()
        pred = logits.argmax(1)
        return Evaluation(
            top1=float((pred == y).mean() * 100.0),
            n_images=len(y),
            parity_agreement=float((pred == ref.argmax(1)).mean()),
            max_abs_logit_diff=float(np.abs(logits - ref).max()),
        )

    def static_facts(self, v: Variant) -> dict:
        packed = self.artifact(v, "compressed")
        if v.model is None:  # an exported file: counted from its initializers and graph
            counts = exported.file_facts(v)
        else:
            counts = {"params": count_params(v.model), "nonzero_params": count_nonzero(v.model),
                      "macs": count_macs(v.model, v.in_shape)}
        params = counts["params"]
        return {**counts,
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
    if v.variant_id == "fp32" or "allowed_drop_pp" not in v.facts:
        f = floor_for(v.model_name, v.dataset_name, wb.config)
        return f, f"floor for {v.model_name} on {v.dataset_name}"
    # The baseline's top-1 in torch, or for an exported file (no torch module) on ONNX Runtime.
    through = "torch-cpu" if v.model is not None else exported.REFERENCE_BACKEND
    base = wb.evaluate(wb.baseline(v.model_name, v.dataset_name), through).top1
    drop = float(v.facts["allowed_drop_pp"])
    return base - drop, f"fp32 baseline {base:.2f}% - allowed drop {drop:.2f} pp"
