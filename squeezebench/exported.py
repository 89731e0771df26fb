"""Variants of an exported model file (``--sb-models onnx:<path>``), built by the Workbench.

The file is the fp32 baseline: nothing is trained, its weights are the file's, and every cache
key built from it holds the file's sha256. Its other variants are the ones a runtime makes from
the file itself (``fp16``, ``int8-static[-cal<N>][-pt]``, ``int8-dynamic[-pt]``): the variant
says *what* in its export spec (``ExportSpec.source_file`` + dtype / ``QuantSpec``), and the
exporters registered for files write each runtime's artifact
(``squeezebench.backends.onnx_source``). A chain with a torch-side step (pruning, distillation,
QAT, a scratch control) raises :class:`~squeezebench.domain.VariantUnavailable`: its benchmarks
skip with the reason. Such a variant has no torch model (``Variant.model`` is None); its parity
reference is the fp32 file run by ONNX Runtime.
"""
from __future__ import annotations

import functools
from pathlib import Path

from squeezebench.compression import parse_variant_id
from squeezebench.compression.base import CompressionConfig
from squeezebench.compression.precision import PrecisionConfig
from squeezebench.compression.quantize import QuantizeConfig, calibration_inputs, parity_min_facts
from squeezebench.domain import Engine, ExportSpec, QuantSpec, Variant, VariantUnavailable
from squeezebench.keys import source_hash
from squeezebench.metrics import onnx_macs, onnx_nonzero_per_layer, onnx_param_counts
from squeezebench.models.onnx_file import (
    RUNTIME_SIDE, check_fits, content_sha256, exported_file_reason, inspect_file, int8_weights, load_model,
)

# The runtime that runs the parity reference of every variant of a file: the fp32 file on it.
REFERENCE_BACKEND = "onnxruntime"
REFERENCE = "the fp32 ONNX file run by ONNX Runtime (CPU)"
DEFAULT_CALIBRATION_IMAGES = 512  # as squeezebench.compression.quantize


def file_baseline(wb: Engine, spec: str, dataset_name: str) -> Variant:
    """The fp32 variant: the file as it is, checked against the dataset (one ModelSourceError
    naming the file and the fix when it does not fit)."""
    data = wb.dataset(dataset_name)
    info = inspect_file(spec)  # again: the file may have changed since pytest started
    check_fits(spec, info, data.in_shape, data.num_classes)
    digest = content_sha256(info.path)  # with its external data files, if any
    arch = wb.arch_for(spec, data)
    key = {"what": "onnx-file", "arch": arch, "dataset": data.fingerprint, "onnx_sha256": digest}
    wb.progress(f"using {info.path} (sha256 {digest[:12]}) for {spec}: an exported ONNX file, not trained")
    return Variant(spec, dataset_name, "fp32", None, arch, key, chain=[], export=ExportSpec(source_file=info.path),
                   facts={"onnx_file": {"path": str(info.path), "sha256": digest, "input": info.input_name,
                                        "output": info.output_name, "opset": info.opset},
                          "train": None, "recipe": None})


def runtime_side_step(spec: str, variant_id: str) -> CompressionConfig | None:
    """The one step of a runtime-side variant (None for fp32), else VariantUnavailable saying why."""
    chain = parse_variant_id(variant_id)
    if not chain:
        return None
    for cfg in chain:
        what = cfg.needs_torch_module()
        if what is not None:
            raise VariantUnavailable(exported_file_reason(spec, what))
    (cfg,) = chain  # precision and quantize are terminal: one of them at most
    if isinstance(cfg, PrecisionConfig) and cfg.dtype != "fp16":
        raise VariantUnavailable(f"{spec} is an exported file: variant {variant_id} is not one of its runtime-side "
                                 f"variants ({', '.join(RUNTIME_SIDE)})")
    return cfg


def _allowed_drop(wb: Engine, cfg: CompressionConfig, spec: str, dataset_name: str) -> float:
    """As ``squeezebench.compression.base.allowed_drop``: the config's, the user's, the default."""
    if cfg.allowed_drop_pp is None:
        pp = wb.config.allowed_drop(cfg.kind, spec, dataset_name)
        if pp is not None:
            return pp
    return cfg.drop()


def file_variant(wb: Engine, spec: str, dataset_name: str, variant_id: str) -> Variant:
    """A runtime-side variant of the file (fp16, int8 static or dynamic), or VariantUnavailable
    (after the file is checked against the dataset: a bad file stops the run whatever the variant)."""
    base = wb.baseline(spec, dataset_name)
    cfg = runtime_side_step(spec, variant_id)
    if cfg is None:
        return base
    path = base.export.source_file
    key = {"after": base.key, "step": cfg.as_dict(), "code": source_hash(file_variant)}
    facts = {k: base.facts[k] for k in ("onnx_file", "train", "recipe")}
    facts["allowed_drop_pp"] = _allowed_drop(wb, cfg, spec, dataset_name)
    arch, qweights = dict(base.arch), None
    if isinstance(cfg, PrecisionConfig):  # fp16: each runtime stores the file's weights in f16
        arch["dtype"] = "float16"
        export = ExportSpec(dtype="float16", source_file=path)
        facts.update(precision="fp16", bits_per_weight=16)
    else:
        assert isinstance(cfg, QuantizeConfig)
        info: dict = {"method": cfg.method, "per_channel": cfg.per_channel, "weights": "int8 symmetric",
                      "activations": "uint8 asymmetric", "reference": REFERENCE}
        calib = None
        if cfg.method == "static":
            n = cfg.calibration_images or int(wb.config.fact("calibration-images", spec, dataset_name)
                                              or DEFAULT_CALIBRATION_IMAGES)
            key["calibration_images"] = n
            calib = calibration_inputs(wb.dataset(dataset_name), n)
            info.update(calibration_images=len(calib), calibration_source="training split (seeded random subset)")
        else:
            info.update(calibration_images=0, activations="uint8 asymmetric, range computed per batch at run time")
        export = ExportSpec(dtype="float32", source_file=path, quantization=QuantSpec(
            method=cfg.method, per_channel=cfg.per_channel, label=cfg.token(), calibration=calib))
        # For the compact encoding: the file's Conv/Gemm/MatMul weights as symmetric int8.
        qweights = int8_weights(path, cfg.per_channel)
        facts.update(quantization=info, bits_per_weight=8,
                     **parity_min_facts(wb.config, cfg.method, spec, dataset_name))
    return Variant(spec, dataset_name, cfg.token(), None, arch, key, chain=[cfg.as_dict()], facts=facts,
                   export=export, qweights=qweights)


@functools.lru_cache(maxsize=16)
def _facts(path: str, digest: str, in_shape: tuple[int, ...]) -> tuple[int, int, int | None, str | None, dict]:
    model = load_model(Path(path))
    params, nonzero = onnx_param_counts(model)
    macs, note = onnx_macs(model, in_shape)
    return params, nonzero, macs, note, onnx_nonzero_per_layer(model)


def file_facts(v: Variant) -> dict:
    """params, nonzero_params (the file's floating-point initializers) and macs (None with
    ``macs_note`` where they cannot be counted) of a variant of an exported file."""
    path = v.export.source_file
    params, nonzero, macs, note, _ = _facts(str(path), v.facts["onnx_file"]["sha256"], v.in_shape)
    out = {"params": params, "nonzero_params": nonzero, "macs": macs,
           "params_basis": "floating-point initializers of the ONNX file",
           "macs_basis": "ONNX shape inference at batch 1: Conv, ConvTranspose, Gemm, MatMul"}
    if note:
        out["macs_note"] = note
    return out


def file_layers(v: Variant) -> dict:
    """Nonzero weights per Conv/Gemm/MatMul node of the file (``nonzero_per_layer`` of a record)."""
    return _facts(str(v.export.source_file), v.facts["onnx_file"]["sha256"], v.in_shape)[4]


__all__ = ["REFERENCE", "REFERENCE_BACKEND", "file_baseline", "file_facts", "file_layers", "file_variant",
           "runtime_side_step"]
