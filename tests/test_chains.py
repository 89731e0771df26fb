"""Chains of pruning, structured pruning, distillation and quantization compose, and every
chain parameter reaches the cache key."""
import pytest
import torch

from squeezebench import encoding as enc
from squeezebench.cache import content_key
from squeezebench.compression import ConfigError, parse_variant_id
from squeezebench.compression.distill import DistillConfig
from squeezebench.compression.prune import PruneConfig
from squeezebench.compression.structured import StructuredPruneConfig


def _weight_zeros(model):
    return {n: int((p == 0).sum()) for n, p in model.named_parameters() if n.endswith("weight")}


def _quantize():
    return pytest.importorskip("squeezebench.compression.quantize")


def test_prune_then_fp16_keeps_the_zeros_and_stores_them_sparse(tiny_workbench):
    wb = tiny_workbench
    pruned = wb.variant("lenet300_100", "tiny", "prune80")
    half = wb.variant("lenet300_100", "tiny", "prune80+fp16")
    assert _weight_zeros(half.model) == _weight_zeros(pruned.model)
    assert next(half.model.parameters()).dtype == torch.float16
    f = wb.static_facts(half)
    assert f["compressed_bytes"] < wb.static_facts(pruned)["compressed_bytes"]
    assert enc.describe(wb.artifact(half, "compressed").main.read_bytes())["tensors"]["fc1.weight"].startswith("sparse")


def test_distill_then_prune(tiny_workbench):
    v = tiny_workbench.variant("lenet5", "tiny", "kd-t4-e3+gprune90")
    assert v.model_name == "lenet5" and v.arch["model"] == "mlp_student"
    assert v.facts["prune"]["achieved_sparsity"] == pytest.approx(0.9, abs=1e-3)
    assert v.facts["distill"]["teacher"]["model"] == "lenet5"
    assert [c["kind"] for c in v.chain] == ["distill", "prune"]


@pytest.mark.parametrize("vid", ["prune80+int8-static", "kd-t4-e3+prune80+int8-static", "sprune50-dense+int8-static"])
def test_pruned_or_distilled_then_int8(tiny_workbench, vid):
    _quantize()
    v = tiny_workbench.variant("lenet300_100", "tiny", vid)
    assert v.qweights
    zeros = {n: float((q["values"] == 0).mean()) for n, q in v.qweights.items()}
    if "prune80" in vid:
        assert all(z >= 0.79 for z in zeros.values()), zeros
    data = tiny_workbench.artifact(v, "compressed").main.read_bytes()
    dec = enc.decode(data)
    for n, q in v.qweights.items():
        assert (dec[n] == q["values"]).all()
    assert enc.describe(data)["label"].startswith(("sparse-relidx-int8", "dense-int8"))


def test_int8_bytes_do_not_count_the_float_copy(tiny_workbench):
    _quantize()
    v = tiny_workbench.variant("lenet300_100", "tiny", "prune80+int8-static")
    stored = enc.stored_tensors(v.model, v.qweights)
    float_weights = [n for n, s in stored.items() if n.endswith("weight") and s["values"].dtype.kind == "f"]
    assert float_weights == []
    nnz = sum(int((q["values"] != 0).sum()) for q in v.qweights.values())
    assert tiny_workbench.static_facts(v)["compressed_bytes"] < 2 * nnz


def test_distill_into_pruned_teacher_then_qat_keeps_zeros(tiny_workbench):
    _quantize()
    wb = tiny_workbench
    pruned = wb.variant("lenet300_100", "tiny", "prune80")
    v = wb.variant("lenet300_100", "tiny", "prune80+kdself-t4+int8-qat")
    assert v.facts["distill"]["teacher"]["is"] == "fp32 baseline of the row"
    for n, q in v.qweights.items():
        assert float((q["values"] == 0).mean()) >= 0.79, n
    # QAT re-zeroes after every step (prune.keep_zeros): the float weights keep every pruned zero.
    for (n, z_before), z_after in zip(_weight_zeros(pruned.model).items(), _weight_zeros(v.model).values()):
        assert z_after >= z_before, n


def test_qat_after_distillation_fine_tunes_with_the_students_recipe(tiny_workbench, monkeypatch):
    _quantize()
    from squeezebench.config import parse_config

    # The student's recipe comes from the user's config here (beside the model otherwise).
    tiny_workbench.config = parse_config({"pairs": {"mlp_student": {"tiny": {"recipe": {"lr": 0.0123}}}}}, "test")
    v = tiny_workbench.variant("lenet300_100", "tiny", "kd-t4+int8-qat-e1")
    assert v.arch["model"] == "mlp_student"
    # QAT runs at 1 % of the current (student) model's recipe lr, not the teacher's.
    assert v.facts["quantization"]["qat"]["recipe"]["lr"] == pytest.approx(0.0123 * 0.01)


def test_terminal_steps_must_come_last():
    with pytest.raises(ConfigError, match="last step"):
        parse_variant_id("fp16+prune80")


def test_every_chain_parameter_reaches_the_cache_key():
    cfgs = [PruneConfig(), PruneConfig(sparsity=0.9), PruneConfig(scope="global"), PruneConfig(steps=2),
            PruneConfig(finetune_epochs=2), PruneConfig(lr_scale=0.2), PruneConfig(allowed_drop_pp=0.5),
            StructuredPruneConfig(), StructuredPruneConfig(ratio=0.75), StructuredPruneConfig(layers="dense+conv"),
            StructuredPruneConfig(finetune_epochs=1), StructuredPruneConfig(lr_scale=0.3),
            DistillConfig(), DistillConfig(temperature=2), DistillConfig(alpha=0.5), DistillConfig(student=None),
            DistillConfig(student="lenet300_100"), DistillConfig(epochs=3), DistillConfig(lr_scale=0.5)]
    keys = {content_key(c.as_dict()) for c in cfgs}
    assert len(keys) == len(cfgs)
    # Order matters too: the chain key nests each step after the previous ones.
    a, b = parse_variant_id("prune80+kdself-t4"), parse_variant_id("kdself-t4+prune80")
    key = lambda chain: content_key([c.as_dict() for c in chain])  # noqa: E731
    assert key(a) != key(b)


def test_chain_variants_get_distinct_cache_entries(tiny_workbench):
    wb = tiny_workbench
    vids = ["prune70", "prune70-e2", "gprune70", "prune70-s2"]
    variants = [wb.variant("lenet300_100", "tiny", vid) for vid in vids]
    assert len({content_key(v.key) for v in variants}) == len(vids)
    assert len(list((wb.settings.cache_dir / "variants").iterdir())) == len(vids)


def test_fine_tuning_and_distilling_from_a_progressive_recipe_run_at_full_size(tiny_workbench):
    """A baseline recipe with resize_stages trains so; the short fine-tuning after pruning and the
    distillation derived from it run at full size (their few epochs could not hold the stages)."""
    from squeezebench.config import parse_config

    recipe = {"epochs": 3, "lr": 0.05, "optimizer": "sgd", "resize_stages": [[2, 8]]}
    tiny_workbench.config = parse_config({"pairs": {"resnet8": {"tiny": {"recipe": recipe}}}}, "test")
    base = tiny_workbench.baseline("resnet8", "tiny")
    assert base.facts["recipe"]["resize_stages"] == ((2, 8),)
    for vid in ("prune50", "kd-t4"):
        v = tiny_workbench.variant("resnet8", "tiny", vid)
        assert v.variant_id == vid and v.model is not None
    from squeezebench.training import TrainConfig

    d = TrainConfig(**recipe).derived(epochs=1)
    assert d.resize_stages == () and d.epochs == 1 and d.lr == 0.05 and d.optimizer == "sgd"
