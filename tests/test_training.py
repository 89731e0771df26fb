"""Training is deterministic and cached by content; corrupt cache entries are retrained."""
import pytest
import torch

from squeezebench.training import TrainConfig


def _weights(v):
    return {k: t.clone() for k, t in v.model.state_dict().items()}


def test_deterministic_and_cached(tiny_workbench):
    cfg = TrainConfig(epochs=1, lr=3e-3, batch_size=64, seed=3)
    lines = []
    tiny_workbench.progress = lines.append
    a = tiny_workbench.train("lenet300_100", "tiny", cfg)
    assert any(l.startswith("training lenet300_100") for l in lines)
    lines.clear()
    b = tiny_workbench.train("lenet300_100", "tiny", cfg)
    assert not any(l.startswith("training") for l in lines), "a second request must be served from the cache"
    for k, t in _weights(a).items():
        assert torch.equal(t, _weights(b)[k])


def test_same_seed_same_weights_without_cache(tiny_workbench, tmp_path):
    from squeezebench.cache import ArtifactCache

    cfg = TrainConfig(epochs=1, lr=3e-3, batch_size=64, seed=5)
    a = tiny_workbench.train("lenet5", "tiny", cfg)
    tiny_workbench.cache = ArtifactCache(tmp_path / "other-cache")
    b = tiny_workbench.train("lenet5", "tiny", cfg)
    for k, t in _weights(a).items():
        assert torch.equal(t, _weights(b)[k]), f"{k} differs between two seeded runs"


def test_training_runs_at_the_pinned_thread_count_whatever_ran_before(tiny_workbench, monkeypatch):
    # Conv training on CPU is bit-reproducible only at a fixed thread count, so training must not
    # inherit the count a backend set earlier in the process, and the count is part of the key.
    from dataclasses import replace

    from squeezebench import training

    seen = []
    real_fit = training.fit

    def spy(*a, **kw):
        seen.append(torch.get_num_threads())
        return real_fit(*a, **kw)

    monkeypatch.setattr(training, "fit", spy)
    cfg = TrainConfig(epochs=1, lr=3e-3, batch_size=64, seed=11)
    torch.set_num_threads(2)
    a = tiny_workbench.train("mlp_student", "tiny", cfg)
    assert seen == [tiny_workbench.train_threads] == [1]
    assert torch.get_num_threads() == 2, "the caller's thread count is restored"
    assert a.key["train_threads"] == 1
    tiny_workbench.settings = replace(tiny_workbench.settings, threads=2)
    assert tiny_workbench.train("mlp_student", "tiny", cfg).key != a.key
    assert seen[-1] == 2
    torch.set_num_threads(1)


def test_key_changes_with_recipe(tiny_workbench):
    a = tiny_workbench.train("mlp_student", "tiny", TrainConfig(epochs=1, lr=1e-3, batch_size=64))
    b = tiny_workbench.train("mlp_student", "tiny", TrainConfig(epochs=1, lr=2e-3, batch_size=64))
    assert a.key != b.key
    assert not torch.equal(a.model[1].weight, b.model[1].weight)


def test_truncated_cache_entry_is_retrained(tiny_workbench):
    cfg = TrainConfig(epochs=1, lr=3e-3, batch_size=64, seed=7)
    a = tiny_workbench.train("lenet300_100", "tiny", cfg)
    entries = list((tiny_workbench.cache.root / "trained").iterdir())
    assert len(entries) == 1
    pt = entries[0] / "model.pt"
    pt.write_bytes(pt.read_bytes()[:100])
    b = tiny_workbench.train("lenet300_100", "tiny", cfg)
    for k, t in _weights(a).items():
        assert torch.equal(t, _weights(b)[k])
    tiny_workbench.cache.verify(entries[0])


def test_progress_is_reported(tiny_workbench):
    lines = []
    tiny_workbench.progress = lines.append
    tiny_workbench.train("mlp_student", "tiny", TrainConfig(epochs=2, lr=1e-3, batch_size=64, seed=9))
    assert any("epoch 2/2" in l for l in lines)


@pytest.mark.parametrize("bad", [dict(epochs=-1), dict(lr=0), dict(optimizer="rmsprop"), dict(schedule="step")])
def test_bad_train_config(bad):
    with pytest.raises(ValueError):
        TrainConfig(**bad)


def test_bf16_autocast_runs_only_where_the_cpu_has_it_and_the_key_says_which(tiny_workbench, monkeypatch):
    """autocast="bf16-native": bf16 arithmetic on CPUs with native bf16, float32 elsewhere; the
    recipe's key and the training summary record which ran, so the two never share a cache entry."""
    from squeezebench import training

    cfg = TrainConfig(epochs=1, lr=3e-3, batch_size=64, seed=3, autocast="bf16-native")
    seen: list[bool] = []
    real_autocast = torch.autocast

    def spy(*a, **kw):
        seen.append(kw.get("enabled", True))
        return real_autocast(*a, **kw)

    monkeypatch.setattr(training.torch, "autocast", spy)
    lines: list[str] = []
    tiny_workbench.progress = lines.append
    for native in (True, False):
        monkeypatch.setattr(training, "native_bf16", lambda native=native: native)
        seen.clear()
        lines.clear()
        v = tiny_workbench.train("lenet5", "tiny", cfg)
        assert any(ln.startswith("training lenet5") for ln in lines), "each precision is its own cache entry"
        want = "bf16 autocast" if native else "f32"
        assert cfg.as_dict()["precision_effective"] == want
        assert seen and set(seen) == {native}  # every step, enabled exactly where native
        assert all(p.dtype == torch.float32 for p in v.model.parameters())  # the weights stay float32
    assert "precision_effective" not in TrainConfig(epochs=1).as_dict()  # fp32 recipes keep their keys
    with pytest.raises(ValueError, match="autocast must be one of none, bf16-native"):
        TrainConfig(autocast="fp8")


def test_resize_stages_train_the_first_epochs_small_then_the_rest_at_full_size(tiny_workbench):
    """``resize_stages=[[1, 8], [1, 12]]`` over 4 epochs: epoch 1 sees 8x8 inputs, epoch 2 12x12,
    epochs 3-4 the dataset's own 16x16; the key names the stages, and a recipe without them keeps
    its key."""
    from squeezebench import training

    data = tiny_workbench.dataset("tiny")
    cfg = TrainConfig(epochs=4, lr=3e-3, batch_size=128, seed=2, augment=True, resize_stages=[[1, 8], [1, 12]])
    model = training.init_model("resnet8", data, cfg.seed, width=4)
    seen: list[tuple] = []
    model.register_forward_pre_hook(  # training batches only (fit first tries 2 images at each side)
        lambda m, args: seen.append(tuple(args[0].shape[-2:])) if len(args[0]) > 2 else None)
    training.fit(model, data, cfg)
    per_epoch = len(seen) // 4
    assert per_epoch == 2  # 256 images, batches of 128
    assert seen == [(8, 8)] * per_epoch + [(12, 12)] * per_epoch + [(16, 16)] * (2 * per_epoch)
    assert cfg.resize_stages == ((1, 8), (1, 12)) and cfg.as_dict()["resize_stages"] == ((1, 8), (1, 12))
    assert "resize_stages" not in TrainConfig(epochs=4).as_dict()


@pytest.mark.parametrize("stages", [[[4, 24]], [[2, 24], [2, 16]], [[1, 0]], [[1]], [[1.5, 24]], [[True, 24]]])
def test_resize_stages_that_leave_no_full_size_epoch_or_are_not_int_pairs_are_refused(stages):
    with pytest.raises(ValueError, match=r"resize_stages is a list of \[epochs, side\] pairs"):
        TrainConfig(epochs=4, resize_stages=stages)


def test_resize_stages_on_a_model_sized_for_its_inputs_name_the_fix(tiny_workbench):
    from squeezebench import training

    data = tiny_workbench.dataset("tiny")
    model = training.init_model("lenet300_100", data, 0)
    with pytest.raises(ValueError, match=r"resize_stages: .* does not accept images of 8 px .*drop resize_stages"):
        training.fit(model, data, TrainConfig(epochs=2, resize_stages=[[1, 8]]))


def test_predict_logits_in_channels_last_agrees_and_leaves_the_model_as_it_was():
    from squeezebench.models import create_model
    from squeezebench.training import predict_logits

    torch.manual_seed(0)
    model = create_model("resnet8", (3, 32, 32), 10).eval()
    x = torch.randn(300, 3, 32, 32)  # not a multiple of the batch: the last batch is short
    nchw = predict_logits(model, x, batch_size=128)
    nhwc = predict_logits(model, x, batch_size=128, channels_last=True)
    assert nhwc.shape == (300, 10)
    torch.testing.assert_close(nhwc, nchw, rtol=1e-4, atol=1e-4)
    assert all(p.is_contiguous() for p in model.parameters())
    # 2-D input (an MLP's) ignores the layout request
    mlp = torch.nn.Sequential(torch.nn.Linear(8, 4))
    torch.testing.assert_close(predict_logits(mlp, torch.ones(5, 8), channels_last=True), mlp(torch.ones(5, 8)))
