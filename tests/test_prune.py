"""Unstructured magnitude pruning (torch.nn.utils.prune) on a tiny model and synthetic data."""
import pytest
import torch
from torch import nn

from squeezebench.compression import ConfigError, parse_variant_id, variant_id
from squeezebench.compression.prune import PruneConfig, keep_zeros, zero_masks
from squeezebench.metrics import count_nonzero


def _layer_sparsity(model):
    return {n: 1 - int(torch.count_nonzero(m.weight)) / m.weight.numel()
            for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))}


@pytest.mark.parametrize("kwargs,fix", [
    ({"sparsity": 80}, "sparsity=0.8"),
    ({"sparsity": 0.0}, "prune80"),
    ({"scope": "net"}, "gprune80"),
    ({"steps": 0}, "steps=1"),
    ({"finetune_epochs": -1}, ">= 0"),
    ({"lr_scale": 0}, "0.5"),
    ({"keep": "middle"}, "first, last, ends"),
])
def test_bad_configs_name_the_fix(kwargs, fix):
    with pytest.raises(ConfigError, match=fix.replace("+", r"\+")):
        PruneConfig(**kwargs)


@pytest.mark.parametrize("token,sparsity,scope,steps,epochs", [
    ("prune50", 0.5, "layer", 1, 1), ("prune80", 0.8, "layer", 1, 1), ("prune90", 0.9, "layer", 2, 2),
    ("gprune95", 0.95, "global", 3, 2), ("gprune98-s4-e3", 0.98, "global", 4, 3), ("prune99.5", 0.995, "layer", 3, 2),
    ("prune80-e2", 0.8, "layer", 1, 2), ("gprune90-s1-e1", 0.9, "global", 1, 1),
    ("gprune90-s1-e1-kfl", 0.9, "global", 1, 1), ("prune80-kl", 0.8, "layer", 1, 1),
])
def test_tokens_round_trip(token, sparsity, scope, steps, epochs):
    (cfg,) = parse_variant_id(token)
    assert (cfg.sparsity, cfg.scope, cfg.steps, cfg.finetune_epochs) == (pytest.approx(sparsity), scope, steps, epochs)
    assert variant_id([cfg]) == token


@pytest.mark.parametrize("token,keep", [("prune80-kf", "first"), ("gprune90-kl", "last"), ("prune80-kfl", "ends"),
                                        ("prune80", "")])
def test_keep_dense_token(token, keep):
    (cfg,) = parse_variant_id(token)
    assert cfg.keep == keep and variant_id([cfg]) == token


@pytest.mark.parametrize("token,dense", [("gprune90-s1-kfl", {"fc1", "fc3"}), ("prune80-kl", {"fc3"}),
                                         ("prune80-kf", {"fc1"})])
def test_layers_kept_dense_are_not_pruned(tiny_workbench, token, dense):
    """Layers kept dense keep every weight; the others reach the sparsity (global: over them only)."""
    v = tiny_workbench.variant("lenet300_100", "tiny", token)
    per = _layer_sparsity(v.model)
    assert {n for n, s in per.items() if s == 0.0} == dense
    assert v.facts["prune"]["kept_dense"] == sorted(dense)
    pruned = [m for n, m in v.model.named_modules() if isinstance(m, nn.Linear) and n not in dense]
    total = sum(m.weight.numel() for m in pruned)
    zeros = sum(int((m.weight == 0).sum()) for m in pruned)
    assert zeros / total == pytest.approx(v.facts["prune"]["sparsity"], abs=0.002)


def test_default_allowed_drops():
    assert PruneConfig(sparsity=0.9).drop() == 1.0
    assert PruneConfig(sparsity=0.95).drop() == 2.0
    assert PruneConfig(sparsity=0.98).drop() == 5.0
    assert PruneConfig(sparsity=0.98, allowed_drop_pp=0.3).drop() == 0.3


def test_layerwise_prune_reaches_sparsity_in_every_layer(tiny_workbench):
    v = tiny_workbench.variant("lenet300_100", "tiny", "prune80")
    for name, s in _layer_sparsity(v.model).items():
        assert s == pytest.approx(0.8, abs=0.002), name
    f = v.facts["prune"]
    assert f["achieved_sparsity"] == pytest.approx(0.8, abs=0.001)
    assert set(f["nonzero_per_layer"]) == {"fc1", "fc2", "fc3"}
    assert f["nonzero_per_layer"]["fc1"]["weight_nonzero"] == round(0.2 * f["nonzero_per_layer"]["fc1"]["weight"])
    assert f["nonzero_per_layer_before"]["fc1"]["weight_nonzero"] == f["nonzero_per_layer"]["fc1"]["weight"]
    assert f["rounds"] and f["rounds"][0]["recipe"]["epochs"] == 1
    assert v.facts["allowed_drop_pp"] == 1.0
    # Masks are permanent: plain `weight` parameters, no hooks, and the torch artifact carries the zeros.
    assert not any(n.endswith("_orig") for n, _ in v.model.named_parameters())
    art = tiny_workbench.artifact(v, "torch")
    sd = torch.load(art.main, weights_only=True)
    assert set(sd) == {f"fc{i}.{p}" for i in (1, 2, 3) for p in ("weight", "bias")}
    assert int((sd["fc1.weight"] == 0).sum()) == sd["fc1.weight"].numel() - f["nonzero_per_layer"]["fc1"]["weight_nonzero"]


def test_global_iterative_prune_reaches_total_sparsity(tiny_workbench):
    v = tiny_workbench.variant("lenet300_100", "tiny", "gprune95-s3")
    f = v.facts["prune"]
    assert f["achieved_sparsity"] == pytest.approx(0.95, abs=1e-4)
    assert [r["round"] for r in f["rounds"]] == [1, 2, 3]
    assert [r["target_sparsity"] for r in f["rounds"]] == pytest.approx([1 - 0.05 ** (i / 3) for i in (1, 2, 3)])
    per = _layer_sparsity(v.model)
    assert len({round(s, 2) for s in per.values()}) > 1  # global: layers end at different sparsities
    assert f["method"].endswith("global_unstructured")


def test_pruned_variant_is_cached(tiny_workbench, tmp_path):
    from squeezebench.settings import resolve_settings
    from squeezebench.workbench import Workbench

    v1 = tiny_workbench.variant("lenet300_100", "tiny", "prune60")
    said = []
    wb2 = Workbench(resolve_settings(data_dir=tmp_path / "data", cache_dir=tmp_path / "cache", threads=1),
                    progress=said.append)
    wb2._datasets["tiny"] = tiny_workbench.dataset("tiny")
    v2 = wb2.variant("lenet300_100", "tiny", "prune60")
    assert not any("prune60" in s for s in said), said  # nothing re-trained
    for (n, a), (_, b) in zip(v1.model.state_dict().items(), v2.model.state_dict().items()):
        assert torch.equal(a, b), n


def test_keep_zeros_restores_pruned_entries():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(8, 4), nn.ReLU(), nn.Linear(4, 2))
    with torch.no_grad():
        m[0].weight[:, :4] = 0
    assert set(zero_masks(m)) == {"0.weight"}
    keep = keep_zeros(m)
    before = count_nonzero(m)
    with torch.no_grad():
        m[0].weight.add_(1.0)
    keep(m)
    assert int((m[0].weight[:, :4] != 0).sum()) == 0
    assert count_nonzero(m) == before
    assert keep_zeros(nn.Linear(3, 3)) is None
