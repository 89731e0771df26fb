"""Models, data and weights from anywhere: ``package.module:callable``, ``torchvision:<name>``,
``timm:<name>`` models, data callables, ``--sb-checkpoint`` weights; and bad input, each one
clear message (a usage error before any work, or exit code 4 once the data is there)."""
from __future__ import annotations

import hashlib
import re
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn

from conftest import new_tiny_workbench, run_bench
from squeezebench import training
from squeezebench.checkpoints import CheckpointError
from squeezebench.data import DataError, load_dataset
from squeezebench.keys import library_version, source_hash
from squeezebench.models import ModelSourceError, ModelUnavailable, create_model, model_entry, sources
from squeezebench.training import TrainConfig

ROOT = Path(__file__).resolve().parents[1]
ONE_EPOCH = TrainConfig(epochs=1, lr=0.01, batch_size=64)

SMALL_CNN = """
from torch import nn

def small_cnn(in_shape, num_classes):
    '''A tiny CNN for any input.'''
    c, h, w = in_shape
    return nn.Sequential(nn.Conv2d(c, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(4),
                         nn.Flatten(), nn.Linear(64, num_classes))

def make_mlp():
    return nn.Sequential(nn.Flatten(), nn.Linear(256, 4))

def make_with_classes(num_classes=10):
    return nn.Sequential(nn.Flatten(), nn.Linear(256, num_classes))

def not_a_module(in_shape, num_classes):
    return "a string"

def one_arg(x):
    return nn.Linear(1, 1)
"""


def _tree(root: Path) -> dict:
    return {str(p): p.stat().st_mtime_ns for p in root.rglob("*")}


@pytest.fixture
def user_module(tmp_path, monkeypatch, request):
    """Write ``code`` as a uniquely named module in a directory put on sys.path; returns its name."""
    made = []

    def write(code: str) -> str:
        name = "sbuser_" + re.sub(r"\W", "_", request.node.name) + f"_{len(made)}"
        d = tmp_path / "usercode"
        d.mkdir(exist_ok=True)
        (d / f"{name}.py").write_text(textwrap.dedent(code))
        monkeypatch.syspath_prepend(str(d))
        made.append(name)
        return name

    yield write
    for name in made:
        sys.modules.pop(name, None)
        sources._RESOLVED.pop(name, None)
        for spec in [s for s in sources._RESOLVED if s.startswith(name + ":")]:
            sources._RESOLVED.pop(spec)


# -- model sources ----------------------------------------------------------------------------
def test_callable_model_trains_exports_and_reloads(tmp_path, user_module):
    mod = user_module(SMALL_CNN)
    spec = f"{mod}:small_cnn"
    before = _tree(tmp_path / "usercode")
    entry = model_entry(spec)
    assert entry.source_file == tmp_path / "usercode" / f"{mod}.py"
    assert entry.code_fingerprint == f"callable:{source_hash(entry.source_file)}"
    assert entry.description == "A tiny CNN for any input."
    wb = new_tiny_workbench(tmp_path)
    v = wb.train(spec, "tiny", ONE_EPOCH)
    assert v.arch["model"] == spec and v.key["code"] == entry.code_fingerprint
    # torch-cpu reloads the artifact through create_model(arch.json's spec); ONNX Runtime runs its export.
    assert wb.evaluate(v, "torch-cpu").parity_agreement == 1.0
    assert wb.evaluate(v, "onnxruntime").parity_agreement >= 0.99
    assert _tree(tmp_path / "usercode") == before, "no __pycache__ or anything else next to the user's module"


def test_zero_arg_factory_is_checked_against_the_dataset(user_module):
    mod = user_module(SMALL_CNN)
    m = create_model(f"{mod}:make_mlp", (1, 16, 16), 4)
    assert m(torch.zeros(2, 1, 16, 16)).shape == (2, 4)
    with pytest.raises(ModelSourceError, match=r"gives \(2, 4\) .*expected logits of shape \(2, 10\).*takes no arguments"):
        create_model(f"{mod}:make_mlp", (1, 16, 16), 10)
    with pytest.raises(ModelSourceError, match=r"cannot run on the dataset's 3x16x16 images"):
        create_model(f"{mod}:make_mlp", (3, 16, 16), 4)
    # Optional num_classes / in_shape parameters of a factory are passed by name.
    assert create_model(f"{mod}:make_with_classes", (1, 16, 16), 7)(torch.zeros(1, 1, 16, 16)).shape == (1, 7)


def test_callable_returning_no_module_or_wrong_signature(user_module):
    mod = user_module(SMALL_CNN)
    with pytest.raises(ModelSourceError, match=rf"'{mod}:not_a_module' returned a str, not a torch.nn.Module"):
        create_model(f"{mod}:not_a_module", (1, 16, 16), 4)
    with pytest.raises(ModelSourceError, match=r"takes 1 required argument.*\(in_shape, num_classes\)"):
        model_entry(f"{mod}:one_arg")
    with pytest.raises(ModelSourceError, match=r"has no attribute 'nope'.*small_cnn"):
        model_entry(f"{mod}:nope")
    with pytest.raises(ModelSourceError, match=r"cannot import module 'sb_no_such_module'"):
        model_entry("sb_no_such_module:f")


def test_torchvision_resnet18_small_stem_trains_and_reloads(tmp_path):
    m = create_model("torchvision:resnet18", (1, 16, 16), 4)
    assert (m.conv1.in_channels, m.conv1.kernel_size, m.conv1.stride) == (1, (3, 3), (1, 1))
    assert isinstance(m.maxpool, nn.Identity) and m.fc.out_features == 4
    entry = model_entry("torchvision:resnet18")
    assert entry.source_file.is_file() and entry.source == "torchvision"
    assert entry.code_fingerprint.startswith(f"torchvision=={library_version('torchvision')}:resnet18:")
    wb = new_tiny_workbench(tmp_path)
    v = wb.train("torchvision:resnet18", "tiny", ONE_EPOCH)
    assert v.key["code"] == entry.code_fingerprint
    assert wb.evaluate(v, "torch-cpu").parity_agreement == 1.0  # rebuilt from arch.json


@pytest.mark.parametrize("name", ["mobilenet_v3_small", "squeezenet1_1", "shufflenet_v2_x0_5", "densenet121"])
def test_torchvision_families_fit_mnist_and_cifar_shapes(name):
    for shape in [(1, 28, 28), (3, 32, 32)]:
        m = create_model(f"torchvision:{name}", shape, 10).eval()
        first = next(c for c in m.modules() if isinstance(c, nn.Conv2d))
        assert first.in_channels == shape[0] and first.stride == (1, 1)
        assert m(torch.zeros(1, *shape)).shape == (1, 10)


def test_torchvision_model_too_big_for_the_input_says_so():
    with pytest.raises(ModelSourceError, match=r"torchvision:convnext_tiny' cannot run on the dataset's 1x16x16"):
        create_model("torchvision:convnext_tiny", (1, 16, 16), 4)
    with pytest.raises(ModelSourceError, match=r"unknown torchvision model 'resnet1800'.*torchvision:resnet18"):
        model_entry("torchvision:resnet1800")


def test_timm_model():
    pytest.importorskip("timm", reason="timm is an optional extra (pip install -e '.[timm]')")
    m = create_model("timm:resnet18", (1, 32, 32), 5)
    assert m(torch.zeros(2, 1, 32, 32)).shape == (2, 5)
    assert model_entry("timm:resnet18").code_fingerprint.startswith(f"timm=={library_version('timm')}:resnet18:")
    with pytest.raises(ModelSourceError, match="unknown timm model 'resnet1800'"):
        model_entry("timm:resnet1800")


def test_timm_missing_is_a_skip_reason(monkeypatch):
    monkeypatch.setitem(sys.modules, "timm", None)  # as if not installed
    monkeypatch.setattr(sources, "_RESOLVED", {})
    with pytest.raises(ModelUnavailable, match=r"needs timm, which is not installed: pip install"):
        model_entry("timm:resnet18")


# -- checkpoints ------------------------------------------------------------------------------
def _no_training(monkeypatch):
    def fail(*a, **k):
        raise AssertionError("a checkpoint must be loaded, not trained")
    monkeypatch.setattr(training, "fit", fail)


def test_checkpoint_is_loaded_instead_of_training_and_keys_the_cache(tmp_path, monkeypatch):
    torch.manual_seed(1)
    model = create_model("lenet300_100", (1, 16, 16), 4)
    a = tmp_path / "a.pt"
    torch.save(model.state_dict(), a)
    _no_training(monkeypatch)
    wb = new_tiny_workbench(tmp_path)
    messages: list[str] = []
    wb.progress = messages.append
    wb.checkpoints["lenet300_100"] = a
    v = wb.baseline("lenet300_100", "tiny")
    assert torch.equal(v.model.fc1.weight, model.fc1.weight)
    assert any(m.startswith(f"loading checkpoint {a}") and "not training" in m for m in messages), messages
    assert not any(m.startswith("training") for m in messages)
    digest = hashlib.sha256(a.read_bytes()).hexdigest()
    assert v.key["checkpoint"] == digest and v.facts["checkpoint"] == {"path": str(a), "sha256": digest}
    assert wb.evaluate(v, "torch-cpu").parity_agreement == 1.0

    with torch.no_grad():
        model.fc1.weight.mul_(0.5)
    b = tmp_path / "b.pt"
    torch.save({"state_dict": model.state_dict()}, b)  # a wrapped state_dict is accepted too
    wb2 = new_tiny_workbench(tmp_path)
    wb2.checkpoints["lenet300_100"] = b
    v2 = wb2.baseline("lenet300_100", "tiny")
    assert v2.key != v.key, "another checkpoint is another cache key"
    assert wb2.artifact(v2, "torch").main.parent != wb.artifact(v, "torch").main.parent


def test_safetensors_checkpoint(tmp_path, monkeypatch):
    st = pytest.importorskip("safetensors.torch")
    model = create_model("mlp_student", (1, 16, 16), 4)
    path = tmp_path / "m.safetensors"
    st.save_file(model.state_dict(), str(path))
    _no_training(monkeypatch)
    wb = new_tiny_workbench(tmp_path)
    wb.checkpoints["mlp_student"] = path
    v = wb.baseline("mlp_student", "tiny")
    assert torch.equal(v.model[1].weight, model[1].weight)


def test_checkpoint_that_does_not_fit_names_file_keys_and_shapes(tmp_path, monkeypatch):
    _no_training(monkeypatch)
    wrong_classes = tmp_path / "ten_classes.pt"
    torch.save(create_model("lenet300_100", (1, 16, 16), 10).state_dict(), wrong_classes)
    wb = new_tiny_workbench(tmp_path)
    wb.checkpoints["lenet300_100"] = wrong_classes
    with pytest.raises(CheckpointError) as e:
        wb.baseline("lenet300_100", "tiny")
    msg = str(e.value)
    assert str(wrong_classes) in msg and "1x16x16 inputs and 4 classes" in msg
    assert "shape mismatches: fc3.weight (10, 100) in the file, (4, 100) in the model" in msg

    prefixed = tmp_path / "ddp.pt"
    torch.save({f"module.{k}": t for k, t in create_model("lenet300_100", (1, 16, 16), 4).state_dict().items()},
               prefixed)
    wb = new_tiny_workbench(tmp_path)
    wb.checkpoints["lenet300_100"] = prefixed
    with pytest.raises(CheckpointError, match=r"missing keys: fc1.weight, .*unexpected keys: module.fc1.weight.*"
                                              r"strip the 'module.' prefix"):
        wb.baseline("lenet300_100", "tiny")

    junk = tmp_path / "junk.pt"
    torch.save([1, 2, 3], junk)
    wb = new_tiny_workbench(tmp_path)
    wb.checkpoints["lenet300_100"] = junk
    with pytest.raises(CheckpointError, match=r"junk.pt holds a list, not a state_dict"):
        wb.baseline("lenet300_100", "tiny")


# -- data callables ---------------------------------------------------------------------------
DATA = """
import numpy as np
import torch
from torch.utils.data import TensorDataset

def _arrays(n, seed):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    x = rng.random((n, 12, 12, 3)).astype(np.float32) * 0.3
    for k in range(3):
        x[y == k, :, :, k] = 1.0
    return x, y

def arrays():
    '''NHWC float images in [0, 1], int labels.'''
    x, y = _arrays(60, 0)
    xt, yt = _arrays(30, 1)
    return x, y, xt, yt

def datasets():
    x, y = _arrays(40, 0)
    xt, yt = _arrays(20, 1)
    t = lambda a: torch.from_numpy(a).permute(0, 3, 1, 2)
    return (TensorDataset(t(x), torch.from_numpy(y)), TensorDataset(t(xt), torch.from_numpy(yt)),
            ["red", "green", "blue"])

def uint8_gray():
    rng = np.random.default_rng(0)
    return (rng.integers(0, 255, (20, 8, 8), dtype=np.uint8), np.arange(20) % 2,
            rng.integers(0, 255, (10, 8, 8), dtype=np.uint8), np.arange(10) % 2)

def label_unseen():
    x, y, xt, yt = arrays(); yt = yt.copy(); yt[0] = 7
    return x, y, xt, yt

def float_labels():
    x, y, xt, yt = arrays(); return x, y + 0.5, xt, yt

def one_hot():
    x, y, xt, yt = arrays(); return x, np.eye(3)[y], xt, yt

def lengths():
    x, y, xt, yt = arrays(); return x, y[:-1], xt, yt

def normalised():
    x, y, xt, yt = arrays(); return (x - 0.5) / 0.25, y, xt, yt

def five_d():
    x, y, xt, yt = arrays(); return x[:, None], y, xt, yt

def split_shapes():
    x, y, xt, yt = arrays(); return x, y, xt[:, :10], yt

def negative():
    x, y, xt, yt = arrays(); y = y.copy(); y[0] = -1; return x, y, xt, yt

def too_many_names():
    return (*arrays(), ["a", "b"])

def a_dict():
    return {"x": 1}
"""


def test_data_callable_arrays_are_converted_and_nothing_is_written(tmp_path, user_module):
    mod = user_module(DATA)
    before = _tree(tmp_path / "usercode")
    ds = load_dataset(f"{mod}:arrays", tmp_path / "data", tmp_path / "cache")
    assert ds.x_train.dtype == torch.uint8 and ds.in_shape == (3, 12, 12) and len(ds.x_test) == 30
    assert ds.num_classes == 3 and ds.classes == ["0", "1", "2"]
    assert int(ds.x_train.max()) == 255 and "scaled to uint8" in ds.source
    assert _tree(tmp_path / "usercode") == before
    assert not (tmp_path / "data").exists() and not (tmp_path / "cache").exists()


def test_data_callable_torch_datasets_and_uint8_grayscale(tmp_path, user_module):
    mod = user_module(DATA)
    ds = load_dataset(f"{mod}:datasets", tmp_path, tmp_path / "cache")
    assert ds.classes == ["red", "green", "blue"] and ds.in_shape == (3, 12, 12) and len(ds.x_train) == 40
    g = load_dataset(f"{mod}:uint8_gray", tmp_path, tmp_path / "cache")
    assert g.in_shape == (1, 8, 8) and g.num_classes == 2 and "scaled" not in g.source


def test_data_callable_trains_a_callable_model(tmp_path, user_module):
    data_mod, model_mod = user_module(DATA), user_module(SMALL_CNN)
    wb = new_tiny_workbench(tmp_path)
    v = wb.train(f"{model_mod}:small_cnn", f"{data_mod}:arrays", ONE_EPOCH)
    assert v.arch["in_shape"] == [3, 12, 12] and v.arch["num_classes"] == 3


@pytest.mark.parametrize("fn,message", [
    ("label_unseen", r"y_test has label 7, which y_train never has"),
    ("float_labels", r"y_train holds non-integer values \(e.g. \d\.5\)"),
    ("one_hot", r"y_train has shape \(60, 3\) \(one-hot or scores\?\).*argmax"),
    ("lengths", r"x_train has 60 images but y_train has 59 labels"),
    ("normalised", r"float images must lie in \[0, 1\], not normalised"),
    ("five_d", r"x_train has shape \(60, 1, 12, 12, 3\)"),
    ("split_shapes", r"train images are \(3, 12, 12\) but test images \(3, 10, 12\)"),
    ("negative", r"negative labels"),
    ("too_many_names", r"labels go up to 2 but 2 class names were given"),
    ("a_dict", r"returned a dict"),
])
def test_bad_data_callable_is_one_clear_error(tmp_path, user_module, fn, message):
    mod = user_module(DATA)
    with pytest.raises(DataError) as e:
        load_dataset(f"{mod}:{fn}", tmp_path, tmp_path / "cache")
    msg = str(e.value)
    assert msg.startswith(f"dataset '{mod}:{fn}': ") and re.search(message, msg), msg
    assert "A dataset callable takes no arguments" in msg and "\n" not in msg


# -- the command a user runs ------------------------------------------------------------------
_pytest = run_bench  # tests/conftest.py


@pytest.mark.parametrize("args,message", [
    (("--sb-backends", "tensorrt"),
     "--sb-backends: unknown backend 'tensorrt'; known: torch-cpu, torch-cuda, onnxruntime, openvino"),
    (("--sb-variants", "fp32,int8-static+prune50"),
     "--sb-variants: variant 'int8-static+prune50': 'int8-static' must be the last step"),
    (("--sb-variants", "prune50+wat"), "--sb-variants: variant 'prune50+wat': unknown variant token 'wat'"),
    (("--sb-models", "lenet5,nope"), "--sb-models: unknown model 'nope'; registered: lenet300_100, lenet5"),
    (("--sb-models", "torchvision:resnet1800"), "--sb-models: unknown torchvision model 'resnet1800'"),
    (("--sb-models", "sb_no_such_module:make"), "--sb-models: model 'sb_no_such_module:make': cannot import module"),
    (("--sb-datasets", "imagenet"), "--sb-datasets: unknown dataset 'imagenet'; known: cifar10, mnist"),
    (("--sb-datasets", "sb_no_such_module:load"), "--sb-datasets: dataset 'sb_no_such_module:load': cannot import"),
    (("--sb-batches", "1,0"), "--sb-batches: '0' is not a positive integer"),
    (("--sb-checkpoint", "lenet5=no/such.pt"), "--sb-checkpoint lenet5=no/such.pt: no such file"),
    (("--sb-checkpoint", "resnet20=x.pt"), "--sb-checkpoint resnet20=x.pt: model 'resnet20' is not benchmarked"),
])
def test_bad_names_are_one_usage_error_line(tmp_path, args, message):
    r, out = _pytest("--collect-only", "--sb-profile", "quick", *args, tmp_path=tmp_path)
    assert r.returncode == 4, out
    errors = [line for line in out.splitlines() if line.startswith("ERROR:")]
    assert len(errors) == 1 and errors[0].startswith(f"ERROR: {message}"), out
    assert "Traceback" not in out and "test_variant" not in out
    assert not (tmp_path / "cache").exists(), "nothing is built or written"


def test_user_model_and_data_specs_are_collected(tmp_path):
    (tmp_path / "sbmods_collect.py").write_text(SMALL_CNN + DATA)
    r, out = _pytest("--collect-only", "--sb-models", "sbmods_collect:small_cnn,torchvision:resnet18",
                     "--sb-datasets", "sbmods_collect:arrays", "--sb-variants", "fp32", "--sb-backends", "torch-cpu",
                     "--sb-batches", "1", tmp_path=tmp_path, pythonpath=tmp_path)
    assert r.returncode == 0, out
    assert "test_variant[sbmods_collect:small_cnn-sbmods_collect:arrays-fp32-torch-cpu-b1]" in out
    assert "test_variant[torchvision:resnet18-sbmods_collect:arrays-fp32-torch-cpu-b1]" in out
    assert not (tmp_path / "__pycache__").exists()


@pytest.mark.parametrize("kind", ["no-module", "checkpoint", "bad-data"])
def test_bad_model_checkpoint_or_data_stop_the_run_with_one_message(tmp_path, kind):
    """Found once the data is there: exit code 4, one message naming the source and the fix."""
    mods = tmp_path / "mods"
    mods.mkdir()
    (mods / "sbmods_run.py").write_text(SMALL_CNN + DATA)
    args = ["--sb-datasets", "sbmods_run:arrays", "--sb-variants", "fp32", "--sb-backends", "torch-cpu",
            "--sb-batches", "1", "--benchmark-disable"]
    if kind == "no-module":
        args += ["--sb-models", "sbmods_run:not_a_module"]
        expect = "model 'sbmods_run:not_a_module' returned a str, not a torch.nn.Module"
    elif kind == "checkpoint":
        ckpt = tmp_path / "w.pt"
        torch.save(create_model("lenet300_100", (3, 12, 12), 10).state_dict(), ckpt)
        args += ["--sb-models", "lenet300_100", "--sb-checkpoint", f"lenet300_100={ckpt}"]
        expect = f"checkpoint {ckpt} does not fit model lenet300_100 built for 3x12x12 inputs and 3 classes"
    else:
        args = ["--sb-models", "lenet300_100", "--sb-datasets", "sbmods_run:one_hot", *args[2:]]
        expect = "dataset 'sbmods_run:one_hot': y_train has shape (60, 3) (one-hot or scores?)"
    before = _tree(mods)
    r, out = _pytest(*args, tmp_path=tmp_path, pythonpath=mods)
    assert r.returncode == 4, out
    assert expect in out and "Traceback" not in out, out
    if kind == "checkpoint":
        assert "training lenet300_100" not in out
    assert _tree(mods) == before, "nothing is written next to the user's code"
