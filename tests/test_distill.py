"""Knowledge distillation (Hinton) and its from-scratch control, on synthetic data."""
import pytest
import torch
import torch.nn.functional as F

from squeezebench.compression import ConfigError, parse_variant_id, variant_id
from squeezebench.compression.distill import (
    TEMPERATURE_SWEEP, DistillConfig, ScratchConfig, kd_loss, student_drop,
)


@pytest.mark.parametrize("token,t,alpha,student,epochs", [
    ("kd-t4", 4.0, 0.9, "mlp_student", None),
    ("kd-t4-a0.5", 4.0, 0.5, "mlp_student", None),
    ("kd-t2.5-slenet300_100-e3", 2.5, 0.9, "lenet300_100", 3),
    ("kdself-t4", 4.0, 0.9, None, 2),
    ("kdself-t8-a1-e1", 8.0, 1.0, None, 1),
] + [(f"kd-t{t}", float(t), 0.9, "mlp_student", None) for t in TEMPERATURE_SWEEP])
def test_tokens_round_trip(token, t, alpha, student, epochs):
    (cfg,) = parse_variant_id(token)
    assert (cfg.temperature, cfg.alpha, cfg.student, cfg.epochs) == (t, alpha, student, epochs)
    assert variant_id([cfg]) == token


def test_scratch_tokens_round_trip():
    (cfg,) = parse_variant_id("scratch-mlp_student-e3")
    assert cfg == ScratchConfig(student="mlp_student", epochs=3)
    assert variant_id([ScratchConfig()]) == "scratch-mlp_student" and ScratchConfig().epochs is None


@pytest.mark.parametrize("make,fix", [
    (lambda: DistillConfig(temperature=0), "temperature"),
    (lambda: DistillConfig(alpha=1.5), r"\[0, 1\]"),
    (lambda: DistillConfig(student="nope"), "kdself-t4"),
    (lambda: DistillConfig(epochs=0), ">= 1"),
    (lambda: ScratchConfig(student="nope"), "mlp_student"),
    (lambda: parse_variant_id("kdself-t4-smlp_student"), "kd-t4-smlp_student"),
])
def test_bad_configs_name_the_fix(make, fix):
    with pytest.raises(ConfigError, match=fix):
        make()


def test_default_epochs_follow_the_student_recipe(tiny_workbench):
    from squeezebench.recipes import recipe_for

    kd = tiny_workbench.variant("lenet5", "tiny", "kd-t4")
    scratch = tiny_workbench.variant("lenet5", "tiny", "scratch-mlp_student")
    assert kd.facts["distill"]["epochs"] == scratch.facts["scratch"]["epochs"] == recipe_for("mlp_student", "tiny").epochs


def test_kd_loss_is_hinton():
    torch.manual_seed(0)
    s, t, y = torch.randn(8, 5), torch.randn(8, 5), torch.randint(0, 5, (8,))
    assert torch.allclose(kd_loss(s, t, y, 4.0, 0.0), F.cross_entropy(s, y))
    soft = F.kl_div(F.log_softmax(s / 4, 1), F.softmax(t / 4, 1), reduction="batchmean") * 16
    assert torch.allclose(kd_loss(s, t, y, 4.0, 1.0), soft, atol=1e-6)
    assert float(kd_loss(t, t, y, 2.0, 1.0)) == pytest.approx(0.0, abs=1e-6)


def test_distilled_student_learns_and_is_recorded(tiny_workbench):
    wb = tiny_workbench
    v = wb.variant("lenet5", "tiny", "kd-t4-e3")
    assert v.model_name == "lenet5" and v.arch["model"] == "mlp_student"  # the teacher's row
    f = v.facts["distill"]
    assert f["teacher"]["model"] == "lenet5" and f["student"]["model"] == "mlp_student"
    assert (f["temperature"], f["alpha"], f["epochs"]) == (4.0, 0.9, 3)
    losses = f["train"]["epoch_losses"]
    assert len(losses) == 3 and losses[-1] < losses[0]
    assert v.facts["allowed_drop_pp"] == student_drop("tiny")
    # Teacher logits: computed once, then read from the verified cache for another temperature.
    entries = list((wb.settings.cache_dir / "teacher_logits").iterdir())
    assert len(entries) == 1
    v2 = wb.variant("lenet5", "tiny", "kd-t8-e3")
    assert len(list((wb.settings.cache_dir / "teacher_logits").iterdir())) == 1
    assert not torch.equal(v.model[1].weight, v2.model[1].weight)


def test_scratch_control_matches_kd_student_start(tiny_workbench):
    wb = tiny_workbench
    kd = wb.variant("lenet300_100", "tiny", "kd-t4-a0-e3")  # alpha 0: plain cross-entropy
    scratch = wb.variant("lenet300_100", "tiny", "scratch-mlp_student-e3")
    assert scratch.arch["model"] == "mlp_student"
    assert scratch.facts["scratch"]["train"]["recipe"] == kd.facts["distill"]["train"]["recipe"]
    assert kd.facts["distill"]["epochs"] == scratch.facts["scratch"]["epochs"] == 3
    # Same init, data order and loss: the same weights (up to float noise of the two loss paths).
    for a, b in zip(kd.model.parameters(), scratch.model.parameters()):
        assert torch.allclose(a, b, atol=1e-5)
    # One control per dataset, shared by every teacher row.
    other = wb.variant("lenet5", "tiny", "scratch-mlp_student-e3")
    for a, b in zip(other.model.parameters(), scratch.model.parameters()):
        assert torch.equal(a, b)


def test_kdself_into_pruned_copy_keeps_zeros_and_uses_the_baseline_as_teacher(tiny_workbench):
    wb = tiny_workbench
    pruned = wb.variant("lenet300_100", "tiny", "prune80")
    v = wb.variant("lenet300_100", "tiny", "prune80+kdself-t4")
    assert v.arch == pruned.arch
    zero_before = [p == 0 for p in pruned.model.parameters()]
    for z, p in zip(zero_before, v.model.parameters()):
        assert int(p[z].abs().sum()) == 0
    f = v.facts["distill"]
    assert f["teacher"]["is"] == "fp32 baseline of the row" and f["student_is"] == "the chain's current model"
    assert f["train"]["recipe"]["lr"] == pytest.approx(0.1 * 1e-3)
    assert v.facts["allowed_drop_pp"] == 1.0
    assert any(not torch.equal(a, b) for a, b in zip(pruned.model.parameters(), v.model.parameters()))


def test_a_student_can_be_any_model_spec(tiny_workbench, tmp_path, monkeypatch):
    """kd-t<T>-s<spec>: the student is a user callable (or torchvision:/timm:), trained like a
    registry student; an unknown or exported-file student is refused with the fix."""
    (tmp_path / "my_students.py").write_text(
        "from torch import nn\n\n"
        "def tiny_student(in_shape, num_classes):\n"
        "    c, h, w = in_shape\n"
        "    return nn.Sequential(nn.Flatten(), nn.Linear(c * h * w, 16), nn.ReLU(), nn.Linear(16, num_classes))\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    from squeezebench.compression import ConfigError, parse_variant_id, variant_id

    for vid in ("kd-t4-smy_students:tiny_student", "kd-t2-a0.5-storchvision:resnet18-e3",
                "scratch-my_students:tiny_student-e2", "kd-t4-stimm:resnet18"):
        assert variant_id(parse_variant_id(vid)) == vid
    (cfg,) = parse_variant_id("kd-t2-a0.5-storchvision:resnet18-e3")
    assert (cfg.student, cfg.epochs, cfg.alpha) == ("torchvision:resnet18", 3, 0.5)
    v = tiny_workbench.variant("lenet300_100", "tiny", "kd-t4-smy_students:tiny_student-e1")
    assert v.arch["model"] == "my_students:tiny_student" and v.facts["distill"]["student"]["params"] < 5000
    assert tiny_workbench.evaluate(v, "onnxruntime").parity_agreement >= 0.995
    with pytest.raises(ConfigError, match="no_such_mod"):
        parse_variant_id("kd-t4-sno_such_mod:f")
    with pytest.raises(ConfigError, match="exported file"):
        parse_variant_id("scratch-onnx:m.onnx")
