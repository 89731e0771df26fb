"""Structured pruning (torch-pruning): shapes really shrink and the torch artifact reloads."""
import json

import numpy as np
import pytest

from squeezebench.models import create_model
from squeezebench.backends import get_backend
from squeezebench.compression import ConfigError, parse_variant_id, variant_id
from squeezebench.compression.structured import StructuredPruneConfig


@pytest.mark.parametrize("token,ratio,layers,epochs", [
    ("sprune50-dense", 0.5, "dense", 4), ("sprune75-conv", 0.75, "dense+conv", 4), ("sprune50-conv-e1", 0.5, "dense+conv", 1),
])
def test_tokens_round_trip(token, ratio, layers, epochs):
    (cfg,) = parse_variant_id(token)
    assert (cfg.ratio, cfg.layers, cfg.finetune_epochs) == (ratio, layers, epochs)
    assert variant_id([cfg]) == token


@pytest.mark.parametrize("kwargs,fix", [({"ratio": 50}, "ratio=0.5"), ({"layers": "conv"}, "sprune50-conv"),
                                        ({"finetune_epochs": 1.5}, "integer")])
def test_bad_configs_name_the_fix(kwargs, fix):
    with pytest.raises(ConfigError, match=fix):
        StructuredPruneConfig(**kwargs)


def _reload_through_torch_cpu(wb, v):
    art = wb.artifact(v, "torch")
    arch = json.loads((art.main.parent / "arch.json").read_text())
    assert arch["kwargs"] == v.arch["kwargs"]
    session = get_backend("torch-cpu")(1).load(art)
    x = wb.dataset("tiny").test_inputs()[:16]
    got = session.to_numpy(session.run(session.prepare(x)))
    np.testing.assert_allclose(got, v.model(x).detach().numpy(), rtol=1e-5, atol=1e-5)
    return arch


def test_dense_neurons_of_lenet300_shrink_and_reload(tiny_workbench):
    v = tiny_workbench.variant("lenet300_100", "tiny", "sprune50-dense")
    assert v.arch["kwargs"] == {"h1": 150, "h2": 50}
    assert tuple(v.model.fc1.weight.shape) == (150, 256) and tuple(v.model.fc3.weight.shape) == (4, 50)
    f = v.facts["structured_prune"]
    assert f["after"]["params"] < f["before"]["params"] / 2
    assert f["after"]["macs"] < f["before"]["macs"] / 2
    assert f["before"]["shapes"]["fc2"] == [100, 300] and f["after"]["shapes"]["fc2"] == [50, 150]
    _reload_through_torch_cpu(tiny_workbench, v)


def test_dense_only_keeps_lenet5_convs(tiny_workbench):
    v = tiny_workbench.variant("lenet5", "tiny", "sprune75-dense")
    assert v.arch["kwargs"]["c1"] == 6 and v.arch["kwargs"]["c2"] == 16
    assert v.arch["kwargs"]["f1"] < 120 and v.arch["kwargs"]["f2"] < 84


def test_conv_filters_of_lenet5_shrink_and_reload(tiny_workbench):
    v = tiny_workbench.variant("lenet5", "tiny", "sprune50-conv")
    kw = v.arch["kwargs"]
    assert kw == {"c1": 6, "c2": 8, "f1": 60, "f2": 42}  # conv1 keeps its filters
    rebuilt = create_model("lenet5", (1, 16, 16), 4, **kw)
    rebuilt.load_state_dict(v.model.state_dict(), strict=True)
    f = v.facts["structured_prune"]
    assert f["after"]["macs"] < f["before"]["macs"] and f["after"]["params"] < f["before"]["params"]
    arch = _reload_through_torch_cpu(tiny_workbench, v)
    assert arch["model"] == "lenet5"


def test_conv_pruning_of_a_model_without_convs_says_what_to_use(tiny_workbench):
    with pytest.raises(ConfigError, match="sprune50-dense"):
        tiny_workbench.variant("lenet300_100", "tiny", "sprune50-conv")


def test_structured_then_unstructured_chain(tiny_workbench):
    v = tiny_workbench.variant("lenet300_100", "tiny", "sprune50-dense+prune80")
    assert v.arch["kwargs"] == {"h1": 150, "h2": 50}
    assert v.facts["prune"]["achieved_sparsity"] == pytest.approx(0.8, abs=0.002)
    assert int((v.model.fc1.weight == 0).sum()) > 0


def test_default_allowed_drops(tiny_workbench):
    assert StructuredPruneConfig(ratio=0.5).drop() == 1.0
    assert StructuredPruneConfig(ratio=0.75, layers="dense").drop() == 3.0
    assert StructuredPruneConfig(ratio=0.75, layers="dense+conv").drop() == 5.0
    assert StructuredPruneConfig(ratio=0.9).drop() == 5.0
    # Removing filters on a dataset other than MNIST allows more (LeNet-5 has few to spare).
    assert tiny_workbench.variant("lenet5", "tiny", "sprune50-conv-e1").facts["allowed_drop_pp"] == 4.0
    assert tiny_workbench.variant("lenet5", "tiny", "sprune50-dense-e1").facts["allowed_drop_pp"] == 1.0


@pytest.mark.parametrize("n_pruned,channels,round_to,expected", [
    (5, 16, 16, 0),    # keep 11 -> 16: nothing goes (torch-pruning's own rounding would remove all 16)
    (10, 32, 16, 16),  # keep 22 -> 16
    (19, 64, 16, 16),  # keep 45 -> 48
    (60, 120, 8, 56),  # keep 60 -> 64 (halfway rounds up)
    (15, 16, 8, 8),    # keep 1 -> at least 8
    (3, 10, 16, 0),    # never more than there is
])
def test_nearest_kept_width(n_pruned, channels, round_to, expected):
    from squeezebench.compression.structured import nearest_kept

    assert nearest_kept(n_pruned, channels, round_to) == expected


def test_round_to_token_round_trips_and_bad_values_name_the_fix():
    (cfg,) = parse_variant_id("sprune30-conv-r16-e2")
    assert (cfg.ratio, cfg.layers, cfg.round_to, cfg.finetune_epochs) == (0.3, "dense+conv", 16, 2)
    assert variant_id([cfg]) == "sprune30-conv-r16-e2"
    assert parse_variant_id("sprune30-conv")[0].round_to == 1
    for bad in (0, 2.5, True):
        with pytest.raises(ConfigError, match="sprune30-conv-r16"):
            StructuredPruneConfig(round_to=bad)


def test_round_to_rounds_every_pruned_width_to_the_nearest_multiple(tiny_workbench):
    exact = tiny_workbench.variant("lenet5", "tiny", "sprune50-conv-e1").arch["kwargs"]
    v = tiny_workbench.variant("lenet5", "tiny", "sprune50-conv-r8-e1")
    assert exact == {"c1": 6, "c2": 8, "f1": 60, "f2": 42}
    assert v.arch["kwargs"] == {"c1": 6, "c2": 8, "f1": 64, "f2": 40}  # 60 -> 64, 42 -> 40; conv1 kept
    assert v.facts["structured_prune"]["round_to"] == 8
    _reload_through_torch_cpu(tiny_workbench, v)


def test_the_users_allowed_drop_for_structured_pruning_applies(tmp_path):
    """``allowed-drop = { structured = ... }`` reaches structured pruning, over the conv default."""
    from conftest import make_tiny_dataset

    from squeezebench.config import parse_config
    from squeezebench.settings import resolve_settings
    from squeezebench.workbench import Workbench

    cfg = parse_config({"models": {"lenet5": {"allowed-drop": {"structured": 2.5}}}}, "test")
    wb = Workbench(resolve_settings(data_dir=tmp_path / "d", cache_dir=tmp_path / "c", threads=1), config=cfg)
    wb._datasets["tiny"] = make_tiny_dataset()
    assert wb.variant("lenet5", "tiny", "sprune50-conv-e1").facts["allowed_drop_pp"] == 2.5  # not the 4.0 default
    assert wb.variant("lenet5", "tiny", "sprune50-dense-e1").facts["allowed_drop_pp"] == 2.5
