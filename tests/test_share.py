"""Weight sharing (k-means codebooks, Deep Compression): configs, clustering, the fine-tuning
projection, the handler on a tiny model, and the compact encoding of shared tensors."""
import numpy as np
import pytest
import torch
from torch import nn

from squeezebench import encoding as enc
from squeezebench.compression import ConfigError, parse_variant_id, variant_id
from squeezebench.compression.share import SharedWeights, WeightShareConfig, cluster, distinct_values


@pytest.mark.parametrize("token,bits,epochs", [("share4", 4, 1), ("share5-e2", 5, 2), ("share8-e0", 8, 0)])
def test_tokens_round_trip(token, bits, epochs):
    (cfg,) = parse_variant_id(token)
    assert (cfg.bits, cfg.finetune_epochs) == (bits, epochs)
    assert variant_id([cfg]) == token


@pytest.mark.parametrize("kwargs,fix", [({"bits": 0}, "share4"), ({"bits": 9}, "bits=4"), ({"bits": 4.0}, "share4"),
                                        ({"finetune_epochs": -1}, ">= 0"), ({"lr_scale": 0}, "0.1")])
def test_bad_configs_name_the_fix(kwargs, fix):
    with pytest.raises(ConfigError, match=fix):
        WeightShareConfig(**kwargs)


def test_share_then_prune_is_allowed_but_share_after_int8_is_not():
    assert variant_id(parse_variant_id("prune80+share4+int8-static")) == "prune80+share4+int8-static"
    with pytest.raises(ConfigError, match="last step"):
        parse_variant_id("int8-static+share4")


def test_cluster_gives_at_most_2_to_the_bits_values_and_keeps_zeros():
    rng = np.random.default_rng(0)
    w = rng.normal(0, 0.05, size=(64, 100)).astype(np.float32)
    w[rng.random(w.shape) < 0.7] = 0.0
    codebook, index = cluster(w, 4)
    shared = codebook[index]
    assert index.shape == w.shape and len(codebook) <= 16 and codebook[0] == 0.0
    assert np.all(shared[w == 0] == 0) and np.all(shared[w != 0] != 0)  # zeros stay, nonzeros stay nonzero
    # linear initialisation keeps the extreme weights near their values
    assert abs(shared.max() - w.max()) < 0.25 * w.max()
    assert np.abs(shared - w).mean() < np.abs(w).mean() / 4
    dense_cb, _ = cluster(rng.normal(size=(50, 50)), 3)
    assert len(dense_cb) == 8 and not (dense_cb == 0).any()  # no zeros: all 8 slots are centroids


def test_projection_puts_weights_back_on_their_cluster_means():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(30, 20), nn.ReLU(), nn.Linear(20, 5))
    with torch.no_grad():
        m[0].weight[:, :10] = 0
    project = SharedWeights(m, 3)
    assert max(distinct_values(m).values()) <= 8
    idx = project.assign["0"][0].reshape(m[0].weight.shape)
    with torch.no_grad():
        m[0].weight.add_(torch.randn_like(m[0].weight) * 0.01)  # an optimizer step
        before = m[0].weight.clone()
    project(m)
    w = m[0].weight
    assert max(distinct_values(m).values()) <= 8
    assert torch.all(w[:, :10] == 0)
    j = int(idx[0, 15])
    assert torch.allclose(w[idx == j], before[idx == j].mean().expand(int((idx == j).sum())), atol=1e-6)


def test_shared_tensors_encode_as_codebook_and_indices_exactly():
    rng = np.random.default_rng(1)
    codebook = np.concatenate(([0.0], rng.normal(size=15))).astype(np.float32)
    w = codebook[rng.integers(0, 16, size=(200, 300))]
    w[:, :150] = 0  # half zero: the sparse form wins
    state = {"fc.weight": torch.from_numpy(w), "fc.bias": torch.from_numpy(rng.normal(size=200).astype(np.float32))}
    data = enc.encode_tensors(enc.stored_tensors(state))
    dec = enc.decode(data)
    np.testing.assert_array_equal(dec["fc.weight"], w)
    assert dec["fc.weight"].dtype == np.float32
    assert enc.describe(data)["tensors"]["fc.weight"].endswith("-codebook")
    assert enc.describe(data)["tensors"]["fc.bias"] == "dense"  # 200 random floats: no codebook
    assert len(data) < w.size * 4 / 8 + 200 * 4  # at most ~4 bits a weight before the coder
    for bits, c in ((8, 200), (2, 3)):  # 8-bit indices for more than 16 values; a tiny codebook
        cb = rng.normal(size=c).astype(np.float32)
        t = cb[rng.integers(0, c, size=(64, 64))]
        got = enc.decode(enc.encode_tensors(enc.stored_tensors({"t": torch.from_numpy(t)})))["t"]
        np.testing.assert_array_equal(got, t)


def test_corrupt_or_truncated_bytes_are_an_error_not_garbage():
    t = np.tile(np.array([0.5, -0.5, 0.25], np.float32), 100)
    data = enc.encode_tensors({"t": {"values": t, "dtype": "float32"}})
    assert "cb" in enc._entries(enc._split(data)[1])[0][0]
    for i in range(4, len(data)):  # any flipped byte after the magic is caught, the coder byte too
        bad = bytearray(data)
        bad[i] ^= 0x5A
        with pytest.raises(ValueError, match="checksum"):
            enc.decode(bytes(bad))
    with pytest.raises(ValueError, match="checksum|truncated"):
        enc.decode(data[:-4])
    with pytest.raises(ValueError, match="bad magic"):
        enc.decode(b"SQZ1" + data[4:])


def test_share_variant_on_the_tiny_model(tiny_workbench):
    wb = tiny_workbench
    v = wb.variant("lenet300_100", "tiny", "prune80+share4")
    pruned = wb.variant("lenet300_100", "tiny", "prune80")
    f = v.facts["share"]
    assert f["bits"] == 4 and set(f["distinct_values"]) == {"fc1", "fc2", "fc3"}
    assert max(f["distinct_values"].values()) <= 16
    for name in ("fc1", "fc2", "fc3"):  # pruned weights stay pruned
        a, b = getattr(v.model, name).weight, getattr(pruned.model, name).weight
        assert torch.equal(a == 0, b == 0), name
    assert wb.static_facts(v)["compressed_bytes"] < wb.static_facts(pruned)["compressed_bytes"] / 2
    assert "codebook" in wb.static_facts(v)["compressed_encoding"]
    decoded = enc.decode(wb.artifact(v, "compressed").main.read_bytes())
    np.testing.assert_array_equal(decoded["fc1.weight"], v.model.fc1.weight.detach().numpy())
    # cached: the same weights come back without clustering again
    again = wb.variant("lenet300_100", "tiny", "prune80+share4")
    assert torch.equal(again.model.fc1.weight, v.model.fc1.weight)
