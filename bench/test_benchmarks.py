"""One benchmark per test id: model x dataset x variant x backend x batch.

The timed call is the backend's batch call on preloaded input; top-1 (through that
backend, full test set), sizes and parity are measured outside the timer, energy and memory
in a separate window after it, and all of it is recorded in ``benchmark.extra_info`` with the
record's validity (top-1 guardrail, parity minimum) before the test asserts it.
"""
import pytest

from squeezebench.backends import get_backend
from squeezebench.record import benchmark_rounds, build_extra_info
from squeezebench.workbench import guardrail_floor


@pytest.mark.bench
def test_variant(benchmark, case, variant, backend_session, evaluation, bench_input, warmup, energy_window,
                 workbench):
    prepared = backend_session.prepare(bench_input)
    warm = warmup(backend_session.run, prepared)
    benchmark(backend_session.run, prepared)
    rounds, timing = benchmark_rounds(benchmark)
    # Energy and memory: a separate window after the timing, so it never inflates latency.
    tracked = energy_window(backend_session.run, prepared)

    floor, floor_rule = guardrail_floor(workbench, variant)
    artifact = workbench.artifact(variant, get_backend(case.backend).artifact_format)
    info = build_extra_info(
        case, variant, artifact, backend_session, evaluation, workbench.static_facts(variant),
        floor, rounds, extra={**warm, **timing, **tracked, "top1_floor_rule": floor_rule},
    )
    # extra_info holds the verdict (valid, invalid_reasons: guardrail and parity) before the test
    # fails on it, since pytest-benchmark saves the record of a failed test all the same.
    benchmark.extra_info.update(info)
    assert info["valid"], "; ".join(info["invalid_reasons"]) + f" (chain {variant.chain or 'none'})"
