"""Test-only pytest plugin: planted slowdowns for measuring the gate's power (`-p planted`).

It re-registers the ``onnxruntime`` backend as a wrapper around the real one whose sessions, in
the benchmark records whose test id matches a glob of ``SQUEEZEBENCH_PLANT`` (``glob=fraction``
pairs joined by commas, e.g. ``*-fp32-onnxruntime-b*=0.2``), busy-wait that fraction of each
call's own time after the call: a real, proportional slowdown of the runtime's work, with the
same record keys as an unplanted run. Runs without a
plant load the same wrapper (fraction 0), so both sides of a comparison pay its bookkeeping.
Each planted record says so in ``runtime.planted_slowdown``.
"""
from __future__ import annotations

import fnmatch
import os
import time
from typing import Any

import numpy as np
import pytest
import torch

from squeezebench.backends import Artifact, Session, get_backend, register_backend

PLANTS = [(glob, float(frac)) for glob, _, frac in
          (item.rpartition("=") for item in os.environ.get("SQUEEZEBENCH_PLANT", "").split(",") if item)]
_state = {"fraction": 0.0}
_Real = get_backend("onnxruntime")


class PlantedSession(Session):
    def __init__(self, inner: Session):
        self.inner = inner
        self.device_name, self.threads = inner.device_name, inner.threads
        self.requested_quantization = inner.requested_quantization

    def prepare(self, x: torch.Tensor) -> Any:
        return self.inner.prepare(x)

    def run(self, prepared: Any) -> Any:
        t0 = time.perf_counter()
        out = self.inner.run(prepared)
        if _state["fraction"]:
            end = t0 + (time.perf_counter() - t0) * (1.0 + _state["fraction"])
            while time.perf_counter() < end:  # busy: the core stays as occupied as by real work
                pass
        return out

    def to_numpy(self, out: Any) -> np.ndarray:
        return self.inner.to_numpy(out)

    def facts(self) -> dict:
        return {**self.inner.facts(), "planted_slowdown": _state["fraction"]}


@register_backend
class PlantedOnnxRuntime(_Real):  # type: ignore[valid-type, misc]
    name = "onnxruntime"

    def load(self, artifact: Artifact) -> Session:
        return PlantedSession(super().load(artifact))


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    callspec = getattr(item, "callspec", None)
    _state["fraction"] = next((f for glob, f in PLANTS if callspec and fnmatch.fnmatchcase(callspec.id, glob)), 0.0)
