"""What cache keys are made of: the versions of the libraries that produced an entry (and only
those), and one train-and-cache path whose rules hold for everything trained."""
from __future__ import annotations

import pytest
import torch

from squeezebench import keys, training
from squeezebench.cache import ArtifactCache

DATA = "tiny"


def _entries(wb, namespace: str) -> int:
    d = wb.settings.cache_dir / namespace
    return len(list(d.iterdir())) if d.is_dir() else 0


def _upgrade(monkeypatch, dist: str) -> None:
    """Pretend ``dist`` was upgraded (its version changes, nothing else)."""
    real = keys.library_version
    monkeypatch.setattr(keys, "library_version", lambda d: "999.0" if d == dist else real(d))


@pytest.fixture
def fresh_wb(tmp_path):
    """A new Workbench (empty memo) over the same cache directory each call."""
    from conftest import make_tiny_dataset, new_tiny_workbench

    data = make_tiny_dataset()
    return lambda: new_tiny_workbench(tmp_path, data)


def test_torch_upgrade_retrains_and_reexports(fresh_wb, monkeypatch):
    wb = fresh_wb()
    wb.artifact(wb.baseline("lenet300_100", DATA), "torch")
    assert _entries(wb, "trained") == 1 and _entries(wb, "artifacts/torch") == 1
    _upgrade(monkeypatch, "torch")
    wb = fresh_wb()
    wb.artifact(wb.baseline("lenet300_100", DATA), "torch")
    assert _entries(wb, "trained") == 2, "a torch upgrade must retrain, not serve the old weights"
    assert _entries(wb, "artifacts/torch") == 2


def test_runtime_upgrade_rebuilds_only_what_it_made(fresh_wb, monkeypatch):
    pytest.importorskip("onnxruntime")
    wb = fresh_wb()
    base = wb.baseline("lenet300_100", DATA)
    v = wb.variant("lenet300_100", DATA, "int8-static")
    for a, fmt in ((base, "onnx"), (v, "onnx"), (v, "torch"), (v, "compressed")):
        wb.artifact(a, fmt)
    before = {ns: _entries(wb, ns) for ns in ("trained", "artifacts/onnx", "artifacts/torch", "artifacts/compressed")}
    assert before["artifacts/onnx"] == 2

    _upgrade(monkeypatch, "onnxruntime")
    wb = fresh_wb()
    base = wb.baseline("lenet300_100", DATA)
    v = wb.variant("lenet300_100", DATA, "int8-static")
    for a, fmt in ((base, "onnx"), (v, "onnx"), (v, "torch"), (v, "compressed")):
        wb.artifact(a, fmt)
    after = {ns: _entries(wb, ns) for ns in before}
    # ORT quantized the int8 ONNX: that one is rebuilt. torch exported the fp32 ONNX, and trained
    # the baseline: those stay, as do the torch and compressed artifacts.
    assert after == {**before, "artifacts/onnx": before["artifacts/onnx"] + 1}, (before, after)


def test_writer_producers_reach_the_key():
    @keys.produced_by("torch", "onnx", "onnxruntime")
    def writer(out):
        return "model.onnx"

    assert keys.producers_of(writer, ("torch",)) == ("torch", "onnx", "onnxruntime")
    assert keys.producers_of(lambda out: "x", ("torch",)) == ("torch",)
    v = keys.producer_versions(("torch", "onnx", "torch"))
    assert list(v) == ["onnx", "torch"] and v["torch"] == keys.library_version("torch") != "not installed"


def test_every_trained_entry_goes_through_one_path(fresh_wb, monkeypatch):
    """Baselines, fine-tuning (pruning, QAT), distillation and the scratch control: each trained
    entry's key holds the thread count, the trainer's code and torch's version, and each trains
    at the pinned thread count, whatever the process was set to."""
    wb = fresh_wb()
    seen_keys: list[tuple[str, dict]] = []
    real_build = ArtifactCache.get_or_build

    def spy(self, namespace, key_parts, build):
        seen_keys.append((namespace, key_parts))
        return real_build(self, namespace, key_parts, build)

    fit_threads: list[int] = []
    real_fit = training.fit

    def fit_spy(*a, **kw):
        fit_threads.append(torch.get_num_threads())
        return real_fit(*a, **kw)

    monkeypatch.setattr(ArtifactCache, "get_or_build", spy)
    monkeypatch.setattr(training, "fit", fit_spy)
    torch.set_num_threads(2)  # a backend loaded earlier may have left the process at another count
    try:
        for vid in ("scratch-mlp_student", "prune50", "kd-t4", "prune50+kdself-t2", "int8-qat-e1"):
            wb.variant("lenet300_100", DATA, vid)
    finally:
        torch.set_num_threads(1)
    trained = [(ns, k) for ns, k in seen_keys if ns in ("trained", "variants")]
    assert len(trained) >= 6  # baseline, scratch, prune, kd student, kdself, qat
    for ns, k in trained:
        assert k.get("train_threads") == wb.train_threads, (ns, k.get("what") or k.get("tag"))
        assert "trainer" in k and k["versions"].get("torch"), (ns, k.get("what") or k.get("tag"))
    assert any(ns == "trained" and k["what"] == "scratch" for ns, k in trained), "scratch trains like a baseline"
    assert fit_threads and set(fit_threads) == {wb.train_threads}, fit_threads
