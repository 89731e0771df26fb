"""What one benchmark record holds in ``extra_info``: the schema reports and gates read."""
from __future__ import annotations

import numpy as np

from squeezebench.backends import Artifact, Session
from squeezebench.profiles import Case
from squeezebench.domain import Evaluation, Variant

SCHEMA_VERSION = 1

REQUIRED_FIELDS = (
    "schema", "model", "dataset", "variant", "backend", "batch", "threads", "per_image_us",
    "images_per_s", "top1", "artifact_bytes", "params", "nonzero_params", "macs",
    "parity_agreement", "device",
)


def latency_fields(round_times_s: list[float] | None, batch: int) -> dict:
    """Per-image latency statistics from per-call times (seconds), labelled with their method."""
    if not round_times_s:
        return {"per_image_us": None, "images_per_s": None, "latency_method": "unavailable: benchmark disabled"}
    t = np.asarray(round_times_s, dtype=np.float64)
    per_image = t / batch * 1e6
    median = float(np.median(per_image))
    return {
        "per_image_us": median,
        "images_per_s": 1e6 / median if median > 0 else None,
        "latency_p50_us": median,
        "latency_p90_us": float(np.percentile(per_image, 90)),
        "latency_p99_us": float(np.percentile(per_image, 99)),
        "latency_mean_us": float(per_image.mean()),
        "latency_stddev_us": float(per_image.std(ddof=1)) if len(per_image) > 1 else 0.0,
        "rounds": int(len(t)),
        "latency_method": "pytest-benchmark rounds of the backend's batch call on preloaded input; "
                          "per image = time per call / batch; percentiles by linear interpolation"
                          + ("" if len(t) >= 100 else f" (only {len(t)} rounds: p99 is close to the maximum)"),
    }


def benchmark_rounds(benchmark) -> tuple[list[float] | None, dict]:
    """The per-call times pytest-benchmark measured, and the options it measured them with."""
    stats = getattr(benchmark, "stats", None)
    if stats is None:
        return None, {}
    opts = getattr(stats, "options", {}) or {}
    return list(stats.stats.data), {"latency_max_time_s": float(opts["max_time"]) if "max_time" in opts else None,
                                    "latency_min_rounds": opts.get("min_rounds")}


def _layers(variant: Variant) -> dict | None:
    from squeezebench.metrics import nonzero_per_layer

    try:
        return nonzero_per_layer(variant.model)
    except Exception:  # a model whose layers hide their weights: the totals still stand
        return None


def build_extra_info(
    case: Case, variant: Variant, artifact: Artifact, session: Session, evaluation: Evaluation,
    static: dict, floor: float, round_times_s: list[float] | None, extra: dict | None = None,
) -> dict:
    runtime = session.facts()
    info = {
        "schema": SCHEMA_VERSION,
        "model": case.model,
        "dataset": case.dataset,
        "variant": case.variant,
        "backend": case.backend,
        "batch": case.batch,
        "threads": session.threads,
        **latency_fields(round_times_s, case.batch),
        "top1": evaluation.top1,
        "top1_floor": floor,
        "test_images": evaluation.n_images,
        "artifact_bytes": artifact.nbytes,
        "artifact_files": {p.name: p.stat().st_size for p in artifact.files},
        "artifact_format": artifact.format,
        **static,
        "parity_agreement": evaluation.parity_agreement,
        "max_abs_logit_diff": evaluation.max_abs_logit_diff,
        "device": session.device_name,
        "chain": variant.chain,
        "nonzero_per_layer": _layers(variant),
        "runtime": runtime,
        # Top level so reports can filter on it: did int8 kernels really run (None: not int8)?
        "int8_kernels": runtime.get("int8_kernels"),
    }
    info.update({k: v for k, v in variant.facts.items() if k != "artifact_meta"})
    info.update(extra or {})
    return info
