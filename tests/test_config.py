"""[tool.squeezebench]: settings beside the user's code, validated when pytest starts."""
from __future__ import annotations

import pytest

from squeezebench.config import Config, ConfigFileError, load_config, parse_config

GOOD = """
[project]
name = "user"

[tool.squeezebench]
profile = "quick"

[tool.squeezebench.profiles.quick]
models = ["models.cnn:small_cnn"]
datasets = ["mnist"]
variants = ["fp32", "int8-static"]
backends = ["torch-cpu"]
batches = [1, 64]

[tool.squeezebench.models."models.cnn:small_cnn"]
recipe = { epochs = 2, lr = 0.05, optimizer = "sgd" }
floor = 97.0
keep_layers = ["conv1"]
allowed-drop = { quantize = 0.3 }

[tool.squeezebench.datasets.mnist]
calibration-images = 256
allowed-drop = { quantize = 0.8, prune = 2.0 }

[tool.squeezebench.pairs."models.cnn:small_cnn".mnist]
floor = 98.5
"""


def test_a_good_table_and_precedence(tmp_path):
    (tmp_path / "pyproject.toml").write_text(GOOD)
    c = load_config(rootdir=tmp_path)
    m = "models.cnn:small_cnn"
    assert c.default_profile == "quick" and c.profiles["quick"]["batches"] == [1, 64]
    assert c.fact("floor", m, "mnist") == 98.5  # the pair beats the model
    assert c.fact("floor", m, "cifar10") == 97.0  # the model beats nothing
    assert c.fact("keep-layers", m, "mnist") == ["conv1"]  # `_` and `-` both work
    assert c.fact("calibration-images", m, "mnist") == 256 and c.fact("calibration-images", m, "x") is None
    assert c.allowed_drop("quantize", m, "mnist") == 0.3  # model over dataset
    assert c.allowed_drop("prune", m, "mnist") == 2.0 and c.allowed_drop("distill", m, "mnist") is None
    assert "pyproject.toml [tool.squeezebench]" in c.source


def test_no_file_or_no_table_is_an_empty_config(tmp_path):
    assert load_config(rootdir=tmp_path) == Config()
    (tmp_path / "pyproject.toml").write_text("[project]\nname = 'x'\n")
    assert load_config(rootdir=tmp_path) == Config()


@pytest.mark.parametrize("table,message", [
    ({"modles": {}}, "unknown key tool.squeezebench.modles; known keys: datasets, gate, models, pairs, profile, profiles"),
    ({"models": {"m": {"flor": 1}}}, "unknown key models.'m'.flor; known keys: recipe"),
    ({"models": {"m": {"floor": "high"}}}, "models.'m'.floor must be top-1 floor"),
    ({"models": {"m": {"floor": True}}}, "models.'m'.floor must be"),
    ({"models": {"m": {"recipe": {"epoch": 3}}}}, "unknown recipe field models.'m'.recipe.epoch; TrainConfig fields"),
    ({"models": {"m": {"recipe": {"optimizer": "lion"}}}}, "optimizer must be sgd, adam or adamw"),
    ({"datasets": {"d": {"allowed-drop": {"prune": 120}}}}, "must be percentage points in [0, 100)"),
    ({"models": {"m": {"parity-min": {"int8": 0.9}}}}, "parity-min.int8: unknown int8 method; known: static"),
    ({"models": {"m": {"parity-min": {"qat": 97}}}}, "must be a fraction in (0, 1], e.g. 0.97 for 97 %"),
    ({"datasets": {"d": {"calibration-images": 0}}}, "calibration-images must be >= 1"),
    ({"datasets": {"d": {"keep-layers": [1]}}}, "must list module names"),
    ({"profiles": {"p": {"models": ["m"]}}}, "profiles.p needs datasets"),
    ({"profiles": {"p": {"models": ["m"], "datasets": ["d"], "batches": [0]}}}, "positive integers"),
    ({"profiles": {"p": {"models": "m", "datasets": ["d"]}}}, "must be a non-empty list"),
    ({"profiles": {"p": {"models": ["m"], "datasets": ["d"], "backend": ["x"]}}}, "unknown key profiles.p.backend"),
    ({"profile": 3}, "profile must be a profile name"),
])
def test_bad_tables_name_key_and_fix(table, message):
    with pytest.raises(ConfigFileError) as e:
        parse_config(table, "pyproject.toml [tool.squeezebench]")
    assert message in str(e.value) and str(e.value).startswith("pyproject.toml [tool.squeezebench]: ")


def test_a_named_file(tmp_path):
    f = tmp_path / "bench.toml"
    f.write_text('[models.m]\nfloor = 90\n')
    assert load_config(f).fact("floor", "m", "d") == 90
    with pytest.raises(ConfigFileError, match="no such config file"):
        load_config(tmp_path / "missing.toml")
    (tmp_path / "pyproject.toml").write_text("[project]\nname='x'\n")
    with pytest.raises(ConfigFileError, match="has no \\[tool.squeezebench\\] table"):
        load_config(tmp_path / "pyproject.toml")
    f.write_text("[models\n")
    with pytest.raises(ConfigFileError, match="not valid TOML"):
        load_config(f)


def test_the_config_reaches_recipes_floors_drops_and_calibration(tmp_path):
    """The engine reads the user's settings: recipe fields over the built-in recipe, the floor,
    the allowed drop per technique, the calibration size, the student's allowed drop."""
    from conftest import make_tiny_dataset

    from squeezebench.settings import resolve_settings
    from squeezebench.workbench import Workbench, guardrail_floor

    cfg = parse_config({
        "models": {"lenet300_100": {"recipe": {"epochs": 1, "lr": 0.01}, "floor": 12.5,
                                    "allowed-drop": {"quantize": 0.25, "prune": 3.0},
                                    "parity-min": {"static": 0.9}}},
        "datasets": {"tiny": {"calibration-images": 32, "student-allowed-drop": 7.0}},
    }, "test")
    wb = Workbench(resolve_settings(data_dir=tmp_path / "d", cache_dir=tmp_path / "c", threads=1), config=cfg)
    wb._datasets["tiny"] = make_tiny_dataset()
    base = wb.baseline("lenet300_100", "tiny")
    assert base.facts["recipe"]["epochs"] == 1 and base.facts["recipe"]["lr"] == 0.01
    assert base.facts["recipe"]["optimizer"] == "adam"  # the rest of the built-in (generic) recipe
    assert guardrail_floor(wb, base)[0] == 12.5
    q = wb.variant("lenet300_100", "tiny", "int8-static")
    assert q.facts["allowed_drop_pp"] == 0.25 and q.facts["quantization"]["calibration_images"] == 32
    assert wb.variant("lenet300_100", "tiny", "int8-static-cal64").facts["quantization"]["calibration_images"] == 64
    assert wb.variant("lenet300_100", "tiny", "prune50").facts["allowed_drop_pp"] == 3.0
    assert wb.variant("lenet300_100", "tiny", "kd-t4").facts["allowed_drop_pp"] == 7.0
    # The user's parity minimum, and the reason every record of the variant carries.
    from squeezebench.record import parity_fields

    assert q.facts["parity_min"] == 0.9
    fields = parity_fields("onnxruntime", q)
    assert fields["parity_min"] == 0.9 and "parity-min.static for lenet300_100" in fields["parity_min_reason"]
    assert wb.variant("lenet300_100", "tiny", "int8-dynamic").facts["parity_min"] == 0.95  # not set: default
    # Another model keeps the built-in defaults.
    other = wb.variant("mlp_student", "tiny", "int8-static")
    assert other.facts["allowed_drop_pp"] == 0.5 and other.facts["parity_min"] == 0.95
    assert "parity_min_reason" not in parity_fields("onnxruntime", other)


def test_a_bad_config_stops_pytest_with_one_line(pytester):
    pytester.makepyprojecttoml('[tool.squeezebench.models.m]\nflor = 3\n')
    pytester.makepyfile(test_x="def test_x():\n    pass\n")
    r = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    assert r.ret == 4
    err = r.stderr.str()
    assert "squeezebench config: " in err and "unknown key models.'m'.flor" in err and "Traceback" not in err


def test_config_profile_is_the_default_and_options_override(pytester):
    pytester.makepyprojecttoml('[tool.squeezebench]\nprofile = "mine"\n'
                               '[tool.squeezebench.profiles.mine]\nmodels = ["lenet5"]\ndatasets = ["mnist"]\n'
                               'variants = ["fp32", "int8-static"]\nbackends = ["onnxruntime"]\nbatches = [3]\n')
    pytester.makepyfile(test_x="def test_variant(case):\n    pass\n")
    r = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--collect-only", "-q")
    out = r.stdout.str()
    assert "test_variant[lenet5-mnist-fp32-onnxruntime-b3]" in out and "int8-static-onnxruntime-b3" in out
    r = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--collect-only", "-q", "--sb-batches", "5",
                                      "--sb-variants", "fp32")
    out = r.stdout.str()
    assert "test_variant[lenet5-mnist-fp32-onnxruntime-b5]" in out and "int8" not in out


def test_keep_layers_and_width_readers(tmp_path):
    """Structured pruning keeps the layers the user names, rebuilds through the width reader the
    model's definition declares, and refuses a model that declares none, naming the fix."""
    from conftest import new_tiny_workbench

    from squeezebench.compression import ConfigError
    from squeezebench.models import register_model
    from squeezebench.models._registry import _REGISTRY

    wb = new_tiny_workbench(tmp_path)
    wb.config = parse_config({"models": {"lenet300_100": {"keep-layers": ["fc1"]}}}, "test")
    v = wb.variant("lenet300_100", "tiny", "sprune50-dense-e1")
    assert v.arch["kwargs"] == {"h1": 300, "h2": 50}, v.arch  # fc1 kept whole, fc2 halved
    wb.config = parse_config({"models": {"lenet300_100": {"keep-layers": ["fc9"]}}}, "test")
    wb._variants.clear()
    with pytest.raises(ConfigError, match=r"keep-layers names \['fc9'\].*its layers: fc1, fc2, fc3"):
        wb.variant("lenet300_100", "tiny", "sprune50-dense-e1")

    from torch import nn

    @register_model
    def no_widths_cnn(in_shape, num_classes):
        c, h, w = in_shape
        return nn.Sequential(nn.Conv2d(c, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                             nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.Flatten(),
                             nn.Linear(16 * h * w, 32), nn.ReLU(), nn.Linear(32, num_classes))

    class HardCoded(nn.Module):
        def __init__(self, in_shape, num_classes):
            super().__init__()
            c, h, w = in_shape
            self.conv = nn.Conv2d(c, 8, 3, padding=1)
            self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
            self.fc = nn.Linear(8 * h * w, num_classes)
            self.n = 8 * h * w

        def forward(self, x):
            return self.fc(self.conv2(self.conv(x)).reshape(-1, self.n))

    register_model(lambda in_shape, num_classes: HardCoded(in_shape, num_classes))  # registers "<lambda>"
    try:
        # No width reader: the resized layers' sizes go into the arch and rebuild any model.
        v = wb.variant("no_widths_cnn", "tiny", "sprune50-conv-e1")
        # conv1 (and its BatchNorm) kept whole; conv2 and the hidden Linear halved, the output
        # layer's input with them.
        assert v.arch["shapes"] == {"3": {"in": 8, "out": 8, "groups": 1}, "6": {"in": 8 * 16 * 16, "out": 16},
                                    "8": {"in": 16, "out": 4}}, v.arch["shapes"]
        ev = wb.evaluate(v, "torch-cpu")  # the torch artifact reloads through arch.json
        assert ev.parity_agreement == 1.0
        with pytest.raises(ConfigError, match=r"could not be rebuilt.*hard-code a size.*register_model\(widths="):
            wb.variant("<lambda>", "tiny", "sprune50-conv-e1")
    finally:
        _REGISTRY.pop("no_widths_cnn")
        _REGISTRY.pop("<lambda>")


def test_structured_pruning_of_a_resnet_without_a_width_reader(tiny_workbench):
    """ResNet-20 declares no widths: torch-pruning keeps residual channels coupled, and the
    resized layers rebuild it from arch.json."""
    v = tiny_workbench.variant("resnet20", "tiny", "sprune50-conv-e1")
    base = tiny_workbench.baseline("resnet20", "tiny")
    assert v.facts["structured_prune"]["after"]["params"] < 0.6 * v.facts["structured_prune"]["before"]["params"]
    assert v.arch["shapes"] and v.arch.get("kwargs") == base.arch.get("kwargs")
    assert tiny_workbench.evaluate(v, "torch-cpu").parity_agreement == 1.0
    assert tiny_workbench.evaluate(v, "onnxruntime").parity_agreement >= 0.99


def test_an_unknown_technique_kind_is_refused_when_the_plugin_loads_the_config(tmp_path):
    """Kinds are the registered techniques' (the config module sits below them): the plugin
    checks them once, at startup, with the file and the key in the message."""
    import subprocess
    import sys

    (tmp_path / "pyproject.toml").write_text('[tool.squeezebench.datasets.d]\nallowed-drop = { pruning = 1 }\n')
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--collect-only"],
                       cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert r.returncode != 0
    out = r.stdout + r.stderr
    assert "allowed-drop.pruning: unknown technique kind; known: " in out and "prune" in out
    assert "Traceback" not in out
