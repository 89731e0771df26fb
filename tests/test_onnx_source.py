"""``--sb-models onnx:<path>``: an exported model file, weights included. Runtime-side variants
(fp32, fp16, int8 static and dynamic) on ONNX Runtime and OpenVINO; torch-side techniques and the
torch backends skip with the reason; a bad file is one clear message (a usage error at start-up,
exit code 4 at load)."""
from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from conftest import make_tiny_dataset, new_tiny_workbench, run_bench
from squeezebench import encoding, training
from squeezebench.backends import BackendUnavailable
from squeezebench.backends.openvino_backend import OPENVINO_NO_DYNAMIC
from squeezebench.domain import VariantUnavailable
from squeezebench.metrics import count_macs, count_params, onnx_macs
from squeezebench.models import ModelSourceError, model_entry, sources
from squeezebench.record import ROUND_TRIP, parity_fields
from squeezebench.training import TrainConfig
from squeezebench.workbench import guardrail_floor

ROOT = Path(__file__).resolve().parents[1]
RUNTIME_SIDE = "runtime-side variants only (fp32, fp16, int8-static, int8-dynamic)"


def tiny_cnn(channels: int = 1, classes: int = 4) -> nn.Module:
    return nn.Sequential(nn.Conv2d(channels, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
                         nn.Linear(32, classes))


def export(model: nn.Module, in_shape: tuple, path: Path, *, dynamic: dict | None = None,
           names: tuple[list, list] = (["input"], ["logits"]), example=None) -> Path:
    """torch.onnx.export with a dynamic batch axis, as squeezebench/backends/onnx_export.py does."""
    example = example if example is not None else (torch.zeros(1, *in_shape),)
    axes = dynamic if dynamic is not None else {n: {0: "batch"} for n in names[0] + names[1]}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model.eval(), example, str(path), dynamo=False, opset_version=17,
                          input_names=names[0], output_names=names[1], dynamic_axes=axes)
    return path


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny CNN trained on the tiny dataset, its torch top-1, and its ONNX export."""
    root = tmp_path_factory.mktemp("onnx_model")
    data = make_tiny_dataset()
    torch.manual_seed(0)
    torch.set_num_threads(1)
    model = tiny_cnn()
    training.fit(model, data, TrainConfig(epochs=4, lr=3e-3, batch_size=32))
    model.eval()
    top1 = training.top1(training.predict_logits(model, data.test_inputs()), data.y_test)
    assert top1 > 85, "the tiny task is learnable"
    return model, top1, export(model, (1, 16, 16), root / "tiny.onnx"), data


_bench = run_bench  # tests/conftest.py


# -- runtime-side variants --------------------------------------------------------------------
def test_runtime_side_variants_run_on_onnxruntime_and_openvino(tmp_path, trained):
    model, torch_top1, path, data = trained
    spec = f"onnx:{path}"
    wb = new_tiny_workbench(tmp_path, data)
    base = wb.variant(spec, "tiny", "fp32")
    assert base.model is None and base.export.source_file == path and base.arch["in_shape"] == [1, 16, 16]
    assert base.facts["onnx_file"]["sha256"] == base.key["onnx_sha256"] and base.facts["train"] is None
    # The fp32 ONNX artifact is the file itself.
    assert wb.artifact(base, "onnx").main.read_bytes() == path.read_bytes()
    runs = {"fp32": ("onnxruntime", "openvino"), "fp16": ("onnxruntime", "openvino"),
            "int8-static": ("onnxruntime", "openvino"), "int8-dynamic": ("onnxruntime",)}
    for vid, backends in runs.items():
        v = wb.variant(spec, "tiny", vid)
        assert v.variant_id == vid and v.model is None and v.formats == ("onnx", "openvino")[:len(backends)]
        for torch_backend in ("torch-cpu", "torch-cuda"):
            assert v.unsupported[torch_backend] == (f"{spec} is an exported file: no torch module to run on "
                                                    f"{torch_backend}; runtime-side backends only (onnxruntime, openvino)")
        with pytest.raises(BackendUnavailable, match="no torch module to run on torch-cpu"):
            wb.session(v, "torch-cpu")
        for backend in backends:
            fmt = wb.backend(backend).artifact_format
            art = wb.artifact(v, fmt)
            assert art.nbytes > 0 and art.meta["dtype"] == v.export.dtype
            session = wb.session(v, backend)
            ev = wb.evaluate(v, backend)
            assert ev.top1 == pytest.approx(torch_top1, abs=4.0), (vid, backend, ev)
            assert ev.parity_agreement >= v.facts.get("parity_min", 0.995), (vid, backend, ev)
            facts = session.facts()
            if vid.startswith("int8"):
                assert facts["int8_any_op"], (vid, backend, facts.get("compute_ops"))
            parity = parity_fields(backend, v)
            assert parity["parity_reference"] == f"the fp32 ONNX file run by ONNX Runtime (CPU): {path}"
            if backend == "openvino":
                assert parity["parity_check"] == "cross-runtime: openvino against onnxruntime"
            elif vid == "fp32":
                assert parity["parity_check"] == ROUND_TRIP
        if "openvino" not in backends:
            assert v.unsupported["openvino"] == OPENVINO_NO_DYNAMIC
        static = wb.static_facts(v)
        assert static["params"] == static["nonzero_params"] == count_params(model)
        assert static["macs"] == count_macs(model, (1, 16, 16)) and "macs_note" not in static
        assert static["compressed_bytes"] > 0
        floor, rule = guardrail_floor(wb, v)
        if vid != "fp32":
            assert rule.startswith(f"fp32 baseline {wb.evaluate(base, 'onnxruntime').top1:.2f}%")
    q = wb.variant(spec, "tiny", "int8-static")
    assert q.facts["quantization"]["tools"]["onnx"].startswith("onnxruntime.quantization.quantize_static")
    assert q.facts["quantization"]["tools"]["openvino"].startswith("nncf.quantize")
    assert q.facts["quantization"]["calibration_images"] == len(data.x_train)  # fewer than 512
    assert wb.variant(spec, "tiny", "fp16").arch["dtype"] == "float16"


def test_compressed_encoding_is_the_files_initializers(tmp_path, trained):
    import onnx
    from onnx import numpy_helper

    model, _, path, data = trained
    wb = new_tiny_workbench(tmp_path, data)
    inits = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(path)).graph.initializer}
    fp32 = encoding.decode(wb.artifact(wb.variant(f"onnx:{path}", "tiny", "fp32"), "compressed").main.read_bytes())
    assert set(fp32) == set(inits) and all(np.array_equal(fp32[k], inits[k]) for k in inits)
    fp16 = encoding.decode(wb.artifact(wb.variant(f"onnx:{path}", "tiny", "fp16"), "compressed").main.read_bytes())
    assert all(fp16[k].dtype == np.float16 for k in inits if inits[k].dtype == np.float32)
    q = wb.variant(f"onnx:{path}", "tiny", "int8-static")
    int8 = encoding.decode(wb.artifact(q, "compressed").main.read_bytes())
    weights = [k for k in inits if inits[k].ndim >= 2]  # two conv kernels, the Gemm weight
    assert len(weights) == 3 and set(q.qweights) == set(weights)
    for k in weights:
        assert int8[k].dtype == np.int8
        back = encoding.dequantize(int8, k, axis=q.qweights[k]["axis"])
        assert np.abs(back - inits[k]).max() <= np.abs(inits[k]).max() / 127 + 1e-7
    sizes = [wb.static_facts(wb.variant(f"onnx:{path}", "tiny", vid))["compressed_bytes"]
             for vid in ("fp32", "fp16", "int8-static")]
    assert sizes[0] > sizes[1] > sizes[2]


def test_torch_side_variants_skip_with_the_reason(tmp_path, trained):
    _, _, path, data = trained
    spec = f"onnx:{path}"
    wb = new_tiny_workbench(tmp_path, data)
    for vid, what in [("prune50", "prune/fine-tune"), ("gprune80", "prune/fine-tune"),
                      ("sprune50-dense", "prune/fine-tune"), ("prune50+int8-static", "prune/fine-tune"),
                      ("kd-t4", "distill"), ("int8-qat", "fine-tune with fake-quant (QAT)")]:
        with pytest.raises(VariantUnavailable) as e:
            wb.variant(spec, "tiny", vid)
        assert str(e.value) == f"{spec} is an exported file: no torch module to {what}; {RUNTIME_SIDE}", vid
    with pytest.raises(VariantUnavailable, match=r"variant bf16 is not one of its runtime-side variants"):
        wb.variant(spec, "tiny", "bf16")
    with pytest.raises(ModelSourceError, match="is an exported file: no torch module to build"):
        wb.train(spec, "tiny")


def test_cache_key_follows_the_files_bytes(tmp_path, trained):
    model, _, _, data = trained
    path = export(model, (1, 16, 16), tmp_path / "m.onnx")
    spec = f"onnx:{path}"
    wb = new_tiny_workbench(tmp_path, data)
    v, q = wb.variant(spec, "tiny", "fp32"), wb.variant(spec, "tiny", "int8-dynamic")
    dirs = {(x.variant_id, fmt): wb.artifact(x, fmt).main.parent for x, fmt in ((v, "onnx"), (q, "onnx"), (v, "openvino"))}
    other = tiny_cnn()
    with torch.no_grad():
        for p_new, p_old in zip(other.parameters(), model.parameters()):
            p_new.copy_(p_old * 0.5)
    export(other, (1, 16, 16), path)  # same path, same size, other weights
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9))
    wb2 = new_tiny_workbench(tmp_path, data)
    v2, q2 = wb2.variant(spec, "tiny", "fp32"), wb2.variant(spec, "tiny", "int8-dynamic")
    assert v2.key["onnx_sha256"] != v.key["onnx_sha256"] and v2.key != v.key and q2.key != q.key
    dirs2 = {(x.variant_id, fmt): wb2.artifact(x, fmt).main.parent
             for x, fmt in ((v2, "onnx"), (q2, "onnx"), (v2, "openvino"))}
    assert len(dirs) == 3 and all(dirs[k] != dirs2[k] for k in dirs)
    # Unchanged bytes: the same entries.
    wb3 = new_tiny_workbench(tmp_path, data)
    assert wb3.artifact(wb3.variant(spec, "tiny", "fp32"), "onnx").main.parent == dirs2["fp32", "onnx"]


def test_external_data_is_counted_and_keyed(tmp_path, trained):
    import onnx

    model, _, path, data = trained
    ext = tmp_path / "ext.onnx"
    onnx.save(onnx.load(str(path)), str(ext), save_as_external_data=True, location="ext.onnx.data",
              size_threshold=0)
    spec = f"onnx:{ext}"
    wb = new_tiny_workbench(tmp_path, data)
    v = wb.variant(spec, "tiny", "fp32")
    art = wb.artifact(v, "onnx")
    assert [p.name for p in art.files] == ["model.onnx"]  # re-saved in one file: far below protobuf's 2 GB
    assert art.nbytes >= 4 * count_params(model)
    assert wb.evaluate(v, "openvino").parity_agreement == 1.0
    # Other bytes in the data file (the .onnx itself unchanged): another key.
    raw = bytearray((tmp_path / "ext.onnx.data").read_bytes())
    raw[:4] = bytes(4)
    (tmp_path / "ext.onnx.data").write_bytes(bytes(raw))
    wb2 = new_tiny_workbench(tmp_path, data)
    assert wb2.variant(spec, "tiny", "fp32").key["onnx_sha256"] != v.key["onnx_sha256"]


def test_macs_none_with_a_note_for_ops_not_counted():
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.ones((4, 3), np.float32), "w")
    g = helper.make_graph([helper.make_node("Einsum", ["x", "w"], ["y"], equation="bi,ij->bj")], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3])], [w])
    macs, note = onnx_macs(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), (4,))
    assert macs is None and note == "MACs not counted: the graph has Einsum (only Conv, ConvTranspose, Gemm, MatMul are)"
    onnx.checker.check_model(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]))


# -- bad files --------------------------------------------------------------------------------
class TwoIn(nn.Module):
    def forward(self, a, b):
        return (a + b).flatten(1)[:, :4]


class AnySize(nn.Module):
    """Global average pooling: exports with dynamic height and width."""

    def __init__(self):
        super().__init__()
        self.conv, self.fc = nn.Conv2d(1, 4, 3, padding=1), nn.Linear(4, 4)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).mean(dim=(2, 3)))


class TwoOut(nn.Module):
    def forward(self, x):
        y = x.flatten(1)[:, :4]
        return y, y * 2


def _bad_file(kind: str, tmp_path: Path) -> tuple[Path, str]:
    """A bad ``onnx:`` file and the start of its one-line message (after 'model 'onnx:PATH': ')."""
    p = tmp_path / f"{kind}.onnx"
    if kind == "missing":
        return p, f"no such file {p}; give the path of an exported ONNX model (export it with torch.onnx.export("
    if kind == "directory":
        p.mkdir()
        return p, f"{p} is not a file"
    if kind == "unreadable":
        export(tiny_cnn(), (1, 16, 16), p)
        p.chmod(0)
        return p, f"cannot read {p} (PermissionError"
    if kind == "not-onnx":
        p.write_bytes(b"\x00\x01 certainly not a protobuf model \xff" * 10)
        return p, f"{p} is not a valid ONNX model ("
    if kind == "checker":  # parses, but a node reads an input nothing defines
        from onnx import TensorProto, helper

        g = helper.make_graph([helper.make_node("Relu", ["nowhere"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 1, 16, 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])])
        p.write_bytes(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString())
        return p, f"{p} is not a valid ONNX model (ValidationError: "
    if kind == "two-inputs":
        export(TwoIn(), (1, 16, 16), p, names=(["a", "b"], ["logits"]),
               example=(torch.zeros(1, 1, 16, 16), torch.zeros(1, 1, 16, 16)))
        return p, f"{p} has 2 inputs (a, b); squeezebench feeds one batch of images"
    if kind == "two-outputs":
        export(TwoOut(), (1, 16, 16), p, names=(["input"], ["y", "z"]))
        return p, f"{p} has 2 outputs (y, z); export the logits only"
    if kind == "dynamic-size":
        export(AnySize(), (1, 16, 16), p, dynamic={"input": {0: "batch", 2: "h", 3: "w"}, "logits": {0: "batch"}})
        return p, (f"input 'input' of {p} has shape (batch, 1, h, w): only the batch dimension may be dynamic; "
                   "export with fixed channels, height and width")
    if kind == "fixed-batch":
        export(tiny_cnn(), (1, 16, 16), p, dynamic={})
        return p, f"input 'input' of {p} has a fixed batch of 1 (shape (1, 1, 16, 16)); the benchmarks run any batch size"
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["missing", "directory", "unreadable", "not-onnx", "checker", "two-inputs",
                                  "two-outputs", "dynamic-size", "fixed-batch"])
def test_bad_file_is_one_usage_error_line_at_startup(tmp_path, kind):
    if kind == "unreadable" and os.geteuid() == 0:
        pytest.skip("root reads a file without read permission")
    path, message = _bad_file(kind, tmp_path)
    r, out = _bench("--collect-only", "--sb-profile", "quick", "--sb-models", f"onnx:{path}", tmp_path=tmp_path)
    assert r.returncode == 4, out
    errors = [line for line in out.splitlines() if line.startswith("ERROR:")]
    assert len(errors) == 1 and errors[0].startswith(f"ERROR: --sb-models: model 'onnx:{path}': {message}"), out
    assert "Traceback" not in out and "test_variant" not in out
    assert not (tmp_path / "cache").exists(), "nothing is built or written"
    sources._RESOLVED.pop(f"onnx:{path}", None)


def test_checkpoint_for_an_onnx_file_is_a_usage_error(tmp_path, trained):
    _, _, path, _ = trained
    r, out = _bench("--collect-only", "--sb-profile", "quick", "--sb-models", f"onnx:{path}",
                    "--sb-checkpoint", f"onnx:{path}=w.pt", tmp_path=tmp_path)
    assert r.returncode == 4 and "Traceback" not in out, out
    assert "is an exported file that holds its own weights; drop --sb-checkpoint for it" in out


def test_a_file_that_does_not_fit_the_dataset_says_so(tmp_path, trained):
    model, _, _, data = trained
    wb = new_tiny_workbench(tmp_path, data)
    rgb = export(tiny_cnn(channels=3), (3, 16, 16), tmp_path / "rgb.onnx")
    with pytest.raises(ModelSourceError) as e:
        wb.variant(f"onnx:{rgb}", "tiny", "int8-static")
    assert str(e.value) == (f"model 'onnx:{rgb}': input 'input' of {rgb} takes 3x16x16 images (C x H x W) but the "
                            "dataset's are 1x16x16; export the model for this dataset's images, or benchmark it on a "
                            "dataset of its input shape")
    ten = export(tiny_cnn(classes=10), (1, 16, 16), tmp_path / "ten.onnx")
    with pytest.raises(ModelSourceError) as e:
        wb.variant(f"onnx:{ten}", "tiny", "fp32")
    assert str(e.value) == (f"model 'onnx:{ten}': output 'logits' of {ten} has shape (batch, 10) but the dataset "
                            "has 4 classes; export the classifier for this dataset's 4 classes: logits of shape "
                            "(batch, 4)")
    flat = export(nn.Sequential(tiny_cnn(), nn.Unflatten(1, (2, 2))), (1, 16, 16), tmp_path / "flat.onnx")
    with pytest.raises(ModelSourceError, match=r"output 'logits' of .* has shape \(batch, 2, 2\); expected logits "
                                               r"of shape \(batch, num_classes\)"):
        model_entry(f"onnx:{flat}")


DATA = """
import numpy as np

def arrays():
    rng = np.random.default_rng(0)
    def split(n):
        y = rng.integers(0, 3, n)
        x = rng.random((n, 3, 12, 12)).astype(np.float32) * 0.3
        for k in range(3):
            x[y == k, k] = 1.0
        return x, y
    return (*split(48), *split(24))
"""


def test_bench_run_skips_torch_side_records_and_stops_on_a_bad_fit(tmp_path):
    """The command a user runs: runtime-side records measure, torch-side ones skip with the reason
    (not an error); a file that does not fit the dataset stops the run with one message, exit 4."""
    mods = tmp_path / "mods"
    mods.mkdir()
    (mods / "sbonnx_data.py").write_text(DATA)
    good = export(tiny_cnn(channels=3, classes=3), (3, 12, 12), tmp_path / "good.onnx")
    args = ["--sb-datasets", "sbonnx_data:arrays", "--sb-variants", "fp32,prune50", "--sb-backends",
            "onnxruntime,torch-cpu", "--sb-batches", "1", "--benchmark-disable", "-rs"]
    r, out = _bench("--sb-models", f"onnx:{good}", *args, tmp_path=tmp_path, pythonpath=mods)
    assert r.returncode == 0 and "1 passed, 3 skipped" in out, out
    assert f"torch-cpu: onnx:{good} is an exported file: no torch module to run on torch-cpu" in out
    assert f"onnx:{good} is an exported file: no torch module to prune/fine-tune; {RUNTIME_SIDE}" in out
    gray = export(tiny_cnn(), (1, 16, 16), tmp_path / "gray.onnx")
    r, out = _bench("--sb-models", f"onnx:{gray}", *args, tmp_path=tmp_path, pythonpath=mods)
    assert r.returncode == 4 and "Traceback" not in out, out
    assert f"squeezebench: model 'onnx:{gray}': input 'input' of {gray} takes 1x16x16 images" in out
