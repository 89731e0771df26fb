"""Backends on a tiny trained model: parity with torch-cpu, honest bytes, skip reasons."""
import importlib.metadata
import importlib.util

import numpy as np
import pytest
import torch

from squeezebench import machine
from squeezebench.backends import BackendUnavailable, get_backend, list_backends
from squeezebench.training import TrainConfig

CPU_BACKENDS = ["torch-cpu", "onnxruntime", "openvino"]


def _need(backend: str) -> None:
    if backend in ("onnxruntime", "openvino"):
        pytest.importorskip(backend)


@pytest.fixture
def tiny_variant(tiny_workbench):
    return tiny_workbench.train("lenet5", "tiny", TrainConfig(epochs=2, lr=3e-3, batch_size=64))


def test_all_four_backends_registered():
    assert set(list_backends()) >= {"torch-cpu", "torch-cuda", "onnxruntime", "openvino"}


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_parity_with_torch_cpu(tiny_workbench, tiny_variant, backend):
    _need(backend)
    ev = tiny_workbench.evaluate(tiny_variant, backend)
    ref = tiny_workbench.evaluate(tiny_variant, "torch-cpu")
    assert ev.parity_agreement >= 0.995, f"{backend} agrees on {ev.parity_agreement:.2%} < 99.5%"
    assert ev.max_abs_logit_diff < 1e-3
    assert ev.top1 == pytest.approx(ref.top1, abs=1.0)
    assert ev.top1 > 60, "the tiny task is learnable; a broken backend would be near chance (25%)"


def test_evaluation_is_cached_by_what_it_depends_on(tmp_path, tiny_dataset):
    """A second run on the same cache reads the evaluation back and says so; a tampered entry is
    rebuilt by measuring again; a different thread count is a different entry."""
    from conftest import new_tiny_workbench

    cfg = TrainConfig(epochs=2, lr=3e-3, batch_size=64)
    first = new_tiny_workbench(tmp_path, tiny_dataset)
    ev = first.evaluate(first.train("lenet5", "tiny", cfg), "torch-cpu")
    assert ev.source == "measured in this run"

    again = new_tiny_workbench(tmp_path, tiny_dataset)
    v = again.train("lenet5", "tiny", cfg)
    cached = again.evaluate(v, "torch-cpu")
    assert cached.source.startswith("cached: evaluations/")
    assert (cached.top1, cached.parity_agreement, cached.max_abs_logit_diff) == (
        ev.top1, ev.parity_agreement, ev.max_abs_logit_diff)

    (entry,) = (tmp_path / "cache" / "evaluations").iterdir()
    (entry / "evaluation.json").write_text('{"top1": 100.0}')  # tampered: fails the manifest check
    third = new_tiny_workbench(tmp_path, tiny_dataset)
    rebuilt = third.evaluate(third.train("lenet5", "tiny", cfg), "torch-cpu")
    assert rebuilt.source == "measured in this run" and rebuilt.top1 == ev.top1

    key = third.evaluation_key(v, "torch-cpu")
    assert key["threads"] == 1 and key["cpu"] == machine.cpu_identity()
    assert key["versions"]["torch"] == importlib.metadata.version("torch")
    assert key["artifact"] and key["dataset"] == tiny_dataset.fingerprint


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_batch_sizes_and_thread_count(tiny_workbench, tiny_variant, backend):
    _need(backend)
    s = tiny_workbench.session(tiny_variant, backend)
    assert s.threads == 1
    x = tiny_workbench.dataset("tiny").test_inputs()
    full = s.predict(x, batch_size=len(x))
    for b in (1, 7):
        out = s.to_numpy(s.run(s.prepare(x[:b])))
        assert out.shape == (b, 4)
        np.testing.assert_allclose(out, full[:b], atol=1e-4)


def test_artifact_bytes_count_every_file(tiny_workbench, tiny_variant):
    pytest.importorskip("openvino")
    ov = tiny_workbench.artifact(tiny_variant, "openvino")
    names = {p.name for p in ov.files}
    assert names == {"model.xml", "model.bin"}
    assert ov.nbytes == sum(p.stat().st_size for p in ov.files)
    params = sum(p.numel() for p in tiny_variant.model.parameters())
    assert (ov.main.with_suffix(".bin")).stat().st_size >= 4 * params, "fp32 weights must be in the .bin"
    pt = tiny_workbench.artifact(tiny_variant, "torch")
    assert {p.name for p in pt.files} == {"model.pt", "arch.json"}


def test_an_ir_openvino_cannot_compile_is_one_skip_with_its_error(tiny_workbench, tiny_variant, monkeypatch):
    ov = pytest.importorskip("openvino")
    from squeezebench.backends import BackendUnavailable
    from squeezebench.backends.openvino_backend import OpenVINOCPU

    art = tiny_workbench.artifact(tiny_variant, "openvino")
    s = OpenVINOCPU(1).load(art)  # compiles for batch 1 at load
    assert (1, 1, 16, 16) in s._compiled
    # The plugin's error as OpenVINO 2026.4.1 worded it (MobileNetV3-Small's QAT IR on an AMX CPU).
    msg = ("Exception from src/inference/src/cpp/core.cpp:117:\nException from src/inference/src/dev/plugin.cpp:54:\n"
           "[MatMulTransformation] END: node: opset1::MatMul /classifier.3/Gemm CALLBACK HAS THROWN\n"
           "Broadcast target_shape has smaller rank 2 than arg shape 4\n")

    def refuse(self, *a, **k):
        raise RuntimeError(msg)

    monkeypatch.setattr(ov.Core, "compile_model", refuse)
    with pytest.raises(BackendUnavailable) as e:
        OpenVINOCPU(1).load(art)
    text = str(e.value)
    assert text.startswith(f"OpenVINO {ov.__version__} could not compile this IR for the CPU")
    assert "[MatMulTransformation] END" in text and "Broadcast target_shape" in text and "Exception from" not in text


def test_onnx_external_data_is_counted(tmp_path):
    import onnx
    from onnx import numpy_helper

    from squeezebench.backends.onnx_export import onnx_files

    m = onnx.helper.make_model(onnx.helper.make_graph(
        [onnx.helper.make_node("Identity", ["w"], ["y"])], "g", [],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1000])],
        [numpy_helper.from_array(np.ones(1000, np.float32), "w")]))
    onnx.save_model(m, str(tmp_path / "model.onnx"), save_as_external_data=True,
                    all_tensors_to_one_file=True, location="model.onnx.data", size_threshold=0)
    files = onnx_files(tmp_path, "model.onnx")
    assert [p.name for p in files] == ["model.onnx", "model.onnx.data"]


def test_onnxruntime_writes_nothing_into_the_cache_entry(tiny_workbench, tiny_variant):
    """ORT's optimised graph (and the profile behind the facts) go to a directory the session owns,
    never into the artifact's verified, shared cache entry; the directory goes with the session."""
    import gc
    from pathlib import Path

    pytest.importorskip("onnxruntime")
    art = tiny_workbench.artifact(tiny_variant, "onnx")
    entry = art.main.parent

    def listing():
        return sorted((str(p.relative_to(entry)), p.stat().st_size, p.stat().st_mtime_ns) for p in entry.rglob("*"))

    before = listing()
    s = get_backend("onnxruntime")(1).load(art)
    s.predict(tiny_workbench.dataset("tiny").test_inputs()[:8])
    f = s.facts()
    assert f["runtime_ops"] and f["int8_share_basis"] == "macs", f  # the optimised graph was written and read
    assert listing() == before
    workdir = Path(s._workdir.name)
    assert workdir.is_dir() and entry not in workdir.parents and workdir != entry
    del s
    gc.collect()
    assert not workdir.exists()


def test_cuda_skip_reason_without_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    cls = get_backend("torch-cuda")
    reason = cls.unavailable_reason()
    assert reason and "no CUDA device" in reason
    with pytest.raises(BackendUnavailable, match="no CUDA device"):
        cls(1).load(None)


@pytest.mark.parametrize("backend,module", [("onnxruntime", "onnxruntime"), ("openvino", "openvino")])
def test_missing_runtime_is_a_reason_not_a_crash(monkeypatch, backend, module):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == module else real(name, *a))
    cls = get_backend(backend)
    assert f"{module} is not installed" in cls.unavailable_reason()
    with pytest.raises(BackendUnavailable):
        cls(1).load(None)


@pytest.mark.gpu
def test_cuda_parity(tiny_workbench, tiny_variant):
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    ev = tiny_workbench.evaluate(tiny_variant, "torch-cuda")
    assert ev.parity_agreement >= 0.995
