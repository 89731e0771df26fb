"""The compact encoding (model.sqz): exact round trip, relative indices, int8, workbench wiring."""
import numpy as np
import pytest
import torch
from torch import nn

from squeezebench import encoding as enc


def _assert_same(decoded, reference):
    assert set(decoded) == set(reference)
    for k, ref in reference.items():
        assert decoded[k].dtype == ref.dtype, k
        assert decoded[k].shape == ref.shape, k
        np.testing.assert_array_equal(decoded[k], ref, err_msg=k)


def _sparse_model(sparsity=0.9, seed=0, dtype=torch.float32):
    torch.manual_seed(seed)
    m = nn.Sequential(nn.Linear(300, 100), nn.ReLU(), nn.Linear(100, 10), nn.BatchNorm1d(10)).to(dtype)
    with torch.no_grad():
        w = m[0].weight
        w[torch.rand_like(w, dtype=torch.float32) < sparsity] = 0
        w[:, :] = w * (torch.arange(300) >= 40)  # long runs of zeros: fillers for 4-bit gaps
        m[2].weight[:, 50:] = 0
    return m


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.float64, torch.bfloat16])
def test_round_trip_is_exact(dtype):
    m = _sparse_model(dtype=dtype)
    data = enc.encode_tensors(enc.stored_tensors(m))
    ref = enc.reference_tensors(m)
    _assert_same(enc.decode(data), ref)
    assert "0.weight" in ref and "3.num_batches_tracked" in ref  # buffers too, int64 scalar included
    assert enc.describe(data)["tensors"]["0.weight"].startswith("sparse")


def test_gaps_longer_than_the_index_field_use_fillers():
    flat = np.zeros(1000, dtype=np.float32)
    flat[[0, 17, 600, 999]] = 1.0
    for bits, span in ((4, 16), (8, 256)):
        pos, idx = enc.sparse_entries(flat, np.zeros_like(flat), bits)
        assert idx.max() < span
        assert set(np.flatnonzero(flat)) <= set(pos)
        assert np.array_equal(np.cumsum(idx.astype(int) + 1) - 1, pos)
    _, idx4 = enc.sparse_entries(flat, np.zeros_like(flat), 4)
    assert len(idx4) == 4 + 16 // 16 + 582 // 16 + 398 // 16  # gaps 0, 16, 582, 398
    state = {"w": torch.from_numpy(flat.reshape(10, 100))}
    _assert_same(enc.decode(enc.encode_tensors(enc.stored_tensors(state))), enc.reference_tensors(state))


def test_int8_qweights_round_trip_with_per_channel_zero_points():
    rng = np.random.default_rng(0)
    q = rng.integers(-128, 128, size=(6, 40)).astype(np.int8)
    zp = np.array([0, 3, -2, 0, 5, 1], dtype=np.int32)
    q[rng.random(q.shape) < 0.85] = 0
    q = np.where(q == 0, zp[:, None], q).astype(np.int8)  # pruned entries sit at the zero point
    u = rng.integers(0, 256, size=(3, 6)).astype(np.uint8)
    u[:, :4] = 200  # uint8 with a zero point that does not fit int8
    qweights = {"0.weight": {"values": q, "scale": rng.random(6).astype(np.float32), "zero_point": zp, "axis": 0},
                "1.weight": {"values": u, "scale": np.array([0.5], np.float32), "zero_point": np.array([200]), "axis": None}}
    m = nn.Sequential(nn.Linear(40, 6), nn.Linear(6, 3))
    data = enc.encode_tensors(enc.stored_tensors(m, qweights))
    dec = enc.decode(data)
    _assert_same(dec, enc.reference_tensors(m, qweights))
    assert dec["0.weight"].dtype == np.int8
    assert enc.describe(data)["label"].startswith("sparse-relidx-int8+")
    w = enc.dequantize(dec, "0.weight", axis=0)
    np.testing.assert_allclose(w[1], qweights["0.weight"]["scale"][1] * (q[1].astype(np.float32) - 3))


def test_sparse_int8_is_much_smaller_than_dense_float():
    m = _sparse_model(sparsity=0.95)
    dense = sum(t.numel() * 4 for t in m.state_dict().values())
    packed = len(enc.encode_tensors(enc.stored_tensors(m)))
    assert packed < dense / 6
    data = enc.encode_tensors(enc.stored_tensors(nn.Linear(64, 64)))  # dense random floats
    assert enc.describe(data)["tensors"]["weight"] == "dense"


def test_workbench_compressed_artifact_and_static_facts(tiny_workbench):
    wb = tiny_workbench
    v = wb.variant("lenet300_100", "tiny", "prune90")
    a = wb.artifact(v, "compressed")
    assert a.main.name == "model.sqz" and a.files == (a.main,)
    _assert_same(enc.decode(a.main.read_bytes()), enc.reference_tensors(v.model, v.qweights))
    f = wb.static_facts(v)
    base = wb.static_facts(wb.baseline("lenet300_100", "tiny"))
    assert f["compressed_bytes"] == a.nbytes and f["compressed_bits_per_weight"] == pytest.approx(a.nbytes * 8 / f["params"])
    assert f["compressed_bytes"] < base["compressed_bytes"] / 4
    assert f["compressed_encoding"].startswith("sparse-relidx+")
    assert base["compressed_bits_per_weight"] > 25  # dense float32 stays near 32 bits per weight
    assert f["nonzero_params"] < base["nonzero_params"]


def test_symbol_streams_are_range_coded_near_their_entropy():
    rng = np.random.default_rng(3)
    p = np.array([0.4, 0.2, 0.1, 0.1, 0.05, 0.05] + [0.01] * 10)
    p /= p.sum()
    cb = np.linspace(-1, 1, 16).astype(np.float32)
    idx = rng.choice(16, size=20000, p=p)
    state = {"w": torch.from_numpy(cb[idx].reshape(100, 200))}
    data = enc.encode_tensors(enc.stored_tensors(state))
    _assert_same(enc.decode(data), enc.reference_tensors(state))
    counts = np.bincount(idx, minlength=16)
    entropy_bytes = -(counts * np.log2(counts / counts.sum())).sum() / 8
    assert enc.describe(data)["label"].endswith("+range")
    # the codebook (64 B), header and checksum aside, within 2 % of the order-0 entropy;
    # packed 4-bit indices would take 10000 B, this source's entropy is about 7000
    assert len(data) < entropy_bytes * 1.02 + 200
    assert enc.stream_bits(idx, 16) / 8 < entropy_bytes * 1.02


@pytest.mark.parametrize("values", [np.zeros((8, 8)), np.full((8, 8), 0.25), np.eye(8) * 3, np.array(1.5)],
                         ids=["all-zero", "constant", "one-nonzero-per-row", "scalar"])
def test_degenerate_tensors_round_trip(values):
    state = {"t": torch.from_numpy(np.asarray(values, dtype=np.float32)), "b": torch.arange(5)}
    _assert_same(enc.decode(enc.encode_tensors(enc.stored_tensors(state))), enc.reference_tensors(state))


def test_large_streams_are_coded_in_pieces_to_the_same_bytes(monkeypatch):
    rng = np.random.default_rng(4)
    q = rng.integers(-20, 20, size=(64, 300)).astype(np.int8)  # 19200 int8 symbols of 256
    qweights = {"w": {"values": q, "scale": np.array([0.1], np.float32), "zero_point": np.array([0]), "axis": None}}
    state = {"w": torch.zeros(64, 300)}
    whole = enc.encode_tensors(enc.stored_tensors(state, qweights))
    monkeypatch.setattr(enc, "_ROWS", 1024)  # 4 symbols of 256 a piece: rounded up to one block
    pieces = enc.encode_tensors(enc.stored_tensors(state, qweights))
    assert pieces == whole
    _assert_same(enc.decode(pieces), enc.reference_tensors(state, qweights))
    assert len(whole) < q.size * 0.75  # ~5.3 bits of entropy a weight: below 8 bits
