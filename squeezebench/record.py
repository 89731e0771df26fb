"""What one benchmark record holds in ``extra_info``: the schema reports and gates read."""
from __future__ import annotations

import time
from typing import Callable

import numpy as np
from scipy.stats import binom

from squeezebench.backends import Artifact, Session
from squeezebench.backends.base import precision_of
from squeezebench.profiles import Case
from squeezebench.domain import Evaluation, Variant

# 2: valid / invalid_reasons, parity_min / parity_reference / parity_check in every record.
SCHEMA_VERSION = 2

REQUIRED_FIELDS = (
    "schema", "model", "dataset", "variant", "backend", "batch", "threads", "per_image_us",
    "images_per_s", "top1", "artifact_bytes", "params", "nonzero_params", "macs",
    "parity_agreement", "parity_min", "parity_reference", "parity_check", "valid", "invalid_reasons", "device",
)

# The share of top-1 predictions a backend must share with the reference, unless the variant
# sets its own (quantize.PARITY_MIN: int8 static/dynamic 95 %, QAT 99 %).
DEFAULT_PARITY_MIN = 0.995
# A runtime that computed in fewer mantissa bits than the variant's torch reference (OpenVINO runs
# an f16 hint in bf16 on CPUs with AVX512-BF16: 8 bits against 11) flips more near-tie predictions
# on deep networks (ResNet-20 on CIFAR-10: 99.4 % agreement); its record is held to this minimum
# instead, and says why (parity_min_reason).
LOWER_PRECISION_PARITY_MIN = 0.99
_MANTISSA_BITS = {"f64": 53, "f32": 24, "f16": 11, "bf16": 8}
ROUND_TRIP = "artifact round trip only: same runtime as the reference"


MEDIAN_CI_METHOD = ("distribution-free 95 % interval of the median from order statistics (binomial), over "
                    "the timed rounds; assumes the rounds are independent, so a drift during the run widens "
                    "the spread (latency_cv) rather than the interval")
MIN_ROUNDS_FOR_CI = 6  # with fewer, even the extremes cover the median less than 95 % of the time


def median_ci(values, level: float = 0.95) -> tuple[float, float] | None:
    """A confidence interval of the median of ``values`` that holds for any continuous
    distribution: the order statistics x(j), x(n-j+1) with j from the Binomial(n, 1/2) quantile,
    so coverage is at least ``level``; None with fewer than MIN_ROUNDS_FOR_CI values."""
    x = np.sort(np.asarray(values, dtype=np.float64))
    n = len(x)
    if n < MIN_ROUNDS_FOR_CI:
        return None
    j = int(binom.ppf((1 - level) / 2, n, 0.5))  # P(X <= j - 1) < (1 - level) / 2
    if j < 1:
        return None
    return float(x[j - 1]), float(x[n - j])


LATENCY_BLOCKS = 20
BLOCKS_METHOD = ("medians of the timed rounds cut into up to {n} consecutive blocks, in time order: what the "
                 "gate's rank test compares (blocks carry a drift that single rounds hide, and keep a record "
                 "small)")


def latency_blocks(per_image_us: np.ndarray, n_blocks: int = LATENCY_BLOCKS) -> list[float]:
    """Medians of ``n_blocks`` consecutive, near-equal slices of the rounds (one per round when fewer)."""
    k = min(n_blocks, len(per_image_us))
    return [float(np.median(b)) for b in np.array_split(per_image_us, k)] if k else []


# Stability: a record whose median's 95 % interval is wider than +-STABLE_REL_HALF_WIDTH of it is
# measured longer (more rounds, up to STABILITY_EXTRA_FACTOR x its timed seconds), then flagged.
STABLE_REL_HALF_WIDTH = 0.03
STABILITY_EXTRA_FACTOR = 2.0


def ci_rel_half_width(values) -> float | None:
    """Half the width of the median's 95 % interval, over the median (None: too few values)."""
    ci = median_ci(values)
    if ci is None:
        return None
    med = float(np.median(np.asarray(values, dtype=np.float64)))
    return (ci[1] - ci[0]) / 2 / med if med > 0 else None


def measure_until_stable(rounds: list[float], run_once: Callable[[], float], budget_s: float,
                         target: float = STABLE_REL_HALF_WIDTH) -> dict:
    """Append timed rounds (``run_once`` returns one call's seconds) to ``rounds`` in place while the
    median's interval is wider than ``target`` and ``budget_s`` lasts; the record's stability fields."""
    t_end = time.perf_counter() + max(0.0, budget_s)
    added, width = 0, ci_rel_half_width(rounds)
    while (width is None or width > target) and time.perf_counter() < t_end:
        for _ in range(max(10, len(rounds) // 4)):
            rounds.append(run_once())
            added += 1
            if time.perf_counter() >= t_end:
                break
        width = ci_rel_half_width(rounds)
    stable = width is not None and width <= target
    how = f"median +-{width:.1%} (95 %)" if width is not None else f"no interval from {len(rounds)} rounds"
    return {"latency_stable": stable, "latency_ci_rel_halfwidth": width, "latency_extra_rounds": added,
            "latency_stability": (f"stable: {how}" + (f" after {added} extra rounds" if added else "")) if stable else
                                 (f"unstable: {how} after {added} extra rounds ({budget_s:.1f} s more at most; "
                                  f"stable needs +-{target:.0%})")}


def latency_fields(round_times_s: list[float] | None, batch: int) -> dict:
    """Per-image latency statistics from per-call times (seconds), labelled with their method."""
    if not round_times_s:
        return {"per_image_us": None, "images_per_s": None, "latency_method": "unavailable: benchmark disabled"}
    t = np.asarray(round_times_s, dtype=np.float64)
    per_image = t / batch * 1e6
    median = float(np.median(per_image))
    ci = median_ci(per_image)
    return {
        "per_image_us": median,
        "images_per_s": 1e6 / median if median > 0 else None,
        "latency_p50_us": median,
        "latency_p90_us": float(np.percentile(per_image, 90)),
        "latency_p99_us": float(np.percentile(per_image, 99)),
        "latency_mean_us": float(per_image.mean()),
        "latency_stddev_us": float(per_image.std(ddof=1)) if len(per_image) > 1 else 0.0,
        "rounds": int(len(t)),
        "latency_p50_ci95_us": list(ci) if ci else None,
        "latency_blocks_us": latency_blocks(per_image),
        "latency_blocks_method": BLOCKS_METHOD.format(n=LATENCY_BLOCKS),
        "latency_cv": float(per_image.std(ddof=1) / per_image.mean()) if len(per_image) > 1 and per_image.mean() > 0 else None,
        "latency_ci_method": MEDIAN_CI_METHOD if ci else f"unavailable: {len(t)} rounds (a 95 % interval of the "
                                                           f"median needs at least {MIN_ROUNDS_FOR_CI})",
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
        if variant.model is None:  # an exported file: its Conv/Gemm/MatMul nodes
            from squeezebench.exported import file_layers

            return file_layers(variant)
        return nonzero_per_layer(variant.model)
    except Exception:  # a model whose layers hide their weights: the totals still stand
        return None


def parity_fields(backend: str, variant: Variant) -> dict:
    """The minimum agreement a record must reach, what it is measured against, and whether that is
    an independent check: torch-cpu running the same module as the reference only proves the
    artifact round-trips."""
    if variant.export.source_file is not None:
        return _file_parity_fields(backend, variant)
    quant = variant.facts.get("quantization") or variant.facts.get("weight_only")
    ref = quant.get("reference") if isinstance(quant, dict) else None
    dtype = str(variant.arch.get("dtype", "float32"))
    reference = (f"{ref} (the variant's torch module, in process)" if ref
                 else f"the variant's torch module in process ({dtype})")
    if backend == "torch-cpu":
        # An int8 variant's torch artifact is torch.ao's int8 modules; otherwise it is the reference module.
        check = ("same runtime, another module: the torch artifact's int8 modules against the reference"
                 if variant.export.quantization is not None else ROUND_TRIP)
    elif backend == "torch-cuda":
        check = "cross-device: torch on CUDA against the reference on the CPU"
    else:
        check = f"cross-runtime: {backend} against torch"
    return {"parity_min": float(variant.facts.get("parity_min", DEFAULT_PARITY_MIN)),
            "parity_reference": reference, "parity_check": check, **_user_parity_reason(variant)}


def _file_parity_fields(backend: str, variant: Variant) -> dict:
    """A variant of an exported file has no torch module: its reference is the fp32 file run by
    ONNX Runtime, so ONNX Runtime's fp32 record only round-trips the file."""
    from squeezebench.exported import REFERENCE, REFERENCE_BACKEND

    if backend != REFERENCE_BACKEND:
        check = f"cross-runtime: {backend} against {REFERENCE_BACKEND}"
    elif variant.variant_id == "fp32":
        check = ROUND_TRIP
    else:
        check = f"same runtime, another model: {REFERENCE_BACKEND}'s {variant.variant_id} artifact against the fp32 file"
    return {"parity_min": float(variant.facts.get("parity_min", DEFAULT_PARITY_MIN)),
            "parity_reference": f"{REFERENCE}: {variant.export.source_file}", "parity_check": check,
            **_user_parity_reason(variant)}


def _user_parity_reason(variant: Variant) -> dict:
    """The reason a variant is held to the user's ``parity-min`` rather than the built-in one."""
    reason = variant.facts.get("parity_min_reason")
    return {"parity_min_reason": reason} if reason else {}


def lower_precision_parity(info: dict, runtime: dict, dtype: str) -> dict:
    """The parity minimum of a record whose runtime reports computing in fewer mantissa bits than
    the reference's ``dtype`` (LOWER_PRECISION_PARITY_MIN, with the reason); {} otherwise."""
    ran, ref = precision_of(runtime.get("inference_precision_effective")), precision_of(dtype)
    if ran not in _MANTISSA_BITS or ref not in _MANTISSA_BITS or _MANTISSA_BITS[ran] >= _MANTISSA_BITS[ref]:
        return {}
    if info.get("parity_min", DEFAULT_PARITY_MIN) <= LOWER_PRECISION_PARITY_MIN:
        return {}
    return {"parity_min": LOWER_PRECISION_PARITY_MIN,
            "parity_min_reason": f"the runtime computed in {ran} ({_MANTISSA_BITS[ran]}-bit mantissa), the reference "
                                 f"in {ref} ({_MANTISSA_BITS[ref]}-bit): minimum {LOWER_PRECISION_PARITY_MIN:.1%} "
                                 f"instead of {info.get('parity_min', DEFAULT_PARITY_MIN):.1%}"}


def invalid_reasons(info: dict) -> list[str]:
    """Why a record is not a valid measurement: its top-1 guardrail and parity check, each failure
    naming the measured value and the bound. Empty: valid."""
    out = []
    top1, floor = info.get("top1"), info.get("top1_floor")
    rule = info.get("top1_floor_rule")
    if top1 is None or floor is None or not top1 >= floor:  # NaN fails too
        out.append(f"top-1 {_pct(top1)} < floor {_pct(floor)}" + (f" ({rule})" if rule else ""))
    agree, pmin = info.get("parity_agreement"), info.get("parity_min", DEFAULT_PARITY_MIN)
    if agree is None or not agree >= pmin:
        out.append(f"parity {_pct(agree, 100)} < minimum {_pct(pmin, 100)}: {info.get('backend')} top-1 "
                   f"predictions against {info.get('parity_reference', 'the reference')}")
    return out


def _pct(v: float | None, scale: float = 1.0) -> str:
    return "not measured" if v is None else f"{v * scale:.2f}%"


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
        "evaluation_source": evaluation.source,
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
        # Top level so reports can filter on it: did int8 kernels run for most of the model's MACs
        # (None: the backend does not say)? int8_share says how much (0..1), int8_label in words.
        "int8_kernels": runtime.get("int8_kernels"),
        "int8_share": runtime.get("int8_share"),
        "int8_label": runtime.get("int8_label"),
    }
    info.update({k: v for k, v in variant.facts.items() if k != "artifact_meta"})
    info.update(extra or {})
    info.update(parity_fields(case.backend, variant))
    info.update(lower_precision_parity(info, runtime, str(variant.arch.get("dtype", "float32"))))
    # Judged here, before the test asserts: pytest-benchmark saves a failed test's record too.
    reasons = invalid_reasons(info)
    info.update(valid=not reasons, invalid_reasons=reasons)
    return info
