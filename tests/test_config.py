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
    ({"modles": {}}, "unknown key tool.squeezebench.modles; known keys: datasets, models, pairs, profile, profiles"),
    ({"models": {"m": {"flor": 1}}}, "unknown key models.'m'.flor; known keys: recipe"),
    ({"models": {"m": {"floor": "high"}}}, "models.'m'.floor must be top-1 floor"),
    ({"models": {"m": {"floor": True}}}, "models.'m'.floor must be"),
    ({"models": {"m": {"recipe": {"epoch": 3}}}}, "unknown recipe field models.'m'.recipe.epoch; TrainConfig fields"),
    ({"models": {"m": {"recipe": {"optimizer": "lion"}}}}, "optimizer must be sgd, adam or adamw"),
    ({"datasets": {"d": {"allowed-drop": {"pruning": 1}}}}, "allowed-drop.pruning: unknown technique kind"),
    ({"datasets": {"d": {"allowed-drop": {"prune": 120}}}}, "must be percentage points in [0, 100)"),
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
