"""An honest compact encoding of a variant's weights (``model.sqz``): what the model costs to
store when zeros are not stored, shared weights are stored as codebook indices and int8 weights
as int8, all entropy coded (Deep Compression's three stages, Han et al. 2016). We write it and read
it back to identical tensors (:func:`decode`), so ``compressed_bytes`` is a size we can stand
behind.

Per tensor, the cheapest of (cost = raw bytes + the ideal code length of its symbol streams):

* ``dense``: every value, in the dtype the variant stores it (float32/float16/float64, bfloat16
  as its 16 bits, int64 buffers as int64; 8-bit integers as a symbol stream);
* ``sparse4`` / ``sparse8``: Deep Compression's relative indices: the nonzero values in order,
  each with the count of zeros before it as a symbol below 16 or 256; a gap longer than that is
  bridged with filler entries (index 15 or 255, value zero);
* for a tensor with at most 256 distinct values (weight sharing,
  :mod:`squeezebench.compression.share`; the 4-bit codes of
  :mod:`squeezebench.compression.weight_only`; an fp16 cast of either), each of the above over
  its codebook indices instead of its values: the codebook (the distinct values, in the stored
  dtype), then the indices as symbols below the codebook's size; "zero" is the index of 0.

Values come from the variant's ``qweights`` (int8, with their per-tensor or per-channel scale
and zero point; 4-bit weight-only codes with one scale per group, the group size in the
header) when a quantize step set them, else from ``model.state_dict()`` exactly. For
int8 tensors "zero" means the zero point.

Two coders, both lossless: the compact JSON header and the raw bytes (floats, scales, codebooks)
go through zlib or lzma from the standard library when that is smaller; the symbol streams
(relative indices, codebook indices, int8 values) are range coded by ``constriction`` under an
adaptive order-0 model (counts so far, updated every 16 symbols; no table stored), Deep
Compression's Huffman stage done with an arithmetic coder. :func:`describe`'s label names both,
e.g. ``sparse-relidx-codebook+lzma+range``.

Layout: ``b"SQZ2"``, one coder byte for the raw part (0 none, 1 zlib, 2 lzma raw LZMA2), a
CRC-32 of the coder byte and the rest (uint32 little-endian), the coded raw part's length (uint32), the coded raw
part (``uint32 header length``, header JSON, per tensor [float32 scales][zero points, int8 when
they fit, else int32] for int8 tensors, [codebook] for shared tensors, [float values]), then the
range coder's 32-bit words, streams in header order (per tensor: relative indices, then values
or codebook indices).
"""
from __future__ import annotations

import json
import lzma
import struct
import zlib
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

MAGIC = b"SQZ2"
CODERS = {0: "none", 1: "zlib", 2: "lzma"}
_LZMA_FILTERS = [{"id": lzma.FILTER_LZMA2, "preset": 9 | lzma.PRESET_EXTREME}]
QSUFFIX_SCALE = "::scale"
QSUFFIX_ZERO_POINT = "::zero_point"


# -- what gets stored -------------------------------------------------------------------------

def _to_numpy(t: torch.Tensor) -> tuple[np.ndarray, str]:
    """A tensor as numpy plus its storage dtype label; bfloat16 travels as its uint16 bits."""
    t = t.detach().cpu().contiguous()
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy().view(np.uint16), "bfloat16"
    a = t.numpy()
    return a, a.dtype.name


def stored_tensors(model_or_state: Any, qweights: dict | None = None) -> dict[str, dict]:
    """Every tensor the encoding stores: ``{name: {"values", "dtype", ["scale", "zero_point", "axis"]}}``.

    ``model_or_state`` is a module or a state_dict; ``qweights`` entries replace the float
    tensor of the same name (and are added if the state_dict has no such name)."""
    state = model_or_state.state_dict() if isinstance(model_or_state, torch.nn.Module) else model_or_state
    covered = _covered_by_qweights(state, qweights or {})
    out: dict[str, dict] = {}
    for name, t in state.items():
        if not isinstance(t, torch.Tensor) or name in covered:
            continue
        a, label = _to_numpy(t)
        out[name] = {"values": a, "dtype": label}
    for name, q in (qweights or {}).items():
        vals = np.asarray(q["values"])
        if vals.dtype not in (np.int8, np.uint8):
            raise ValueError(f"qweights[{name!r}]['values'] must be int8 or uint8, got {vals.dtype}")
        out[name] = {"values": vals, "dtype": vals.dtype.name,
                     "scale": np.asarray(q["scale"], dtype=np.float32).reshape(-1),
                     "zero_point": np.asarray(q["zero_point"]).reshape(-1).astype(np.int32),
                     "axis": q.get("axis"), **({"group_size": int(q["group_size"])} if q.get("group_size") else {})}
    return out


def _covered_by_qweights(state: dict, qweights: dict) -> set[str]:
    """state_dict entries an int8 entry of ``qweights`` makes redundant: the float weight itself
    (same name, or FX's fused ``fc1.0.weight`` for ``fc1.weight``, same shape) and that weight's
    own quantization parameters (a reference module's ``weight_scale/_zero_point/_axis``, a QAT
    module's ``weight_fake_quant.*``). Activation quantization parameters are kept."""
    covered: set[str] = set()
    for qname, q in qweights.items():
        prefix, _, leaf = qname.rpartition(".")
        for cand in (qname, f"{prefix}.0.{leaf}" if prefix else f"0.{leaf}"):
            t = state.get(cand)
            if isinstance(t, torch.Tensor) and tuple(t.shape) == tuple(np.shape(q["values"])):
                covered.add(cand)
                covered.update(cand + sfx for sfx in ("_scale", "_zero_point", "_axis"))
                mod = cand.rpartition(".")[0]
                fq = f"{mod}.{leaf}_fake_quant." if mod else f"{leaf}_fake_quant."
                covered.update(k for k in state if k.startswith(fq))
    return covered


def reference_tensors(model_or_state: Any, qweights: dict | None = None) -> dict[str, np.ndarray]:
    """What :func:`decode` must give back: each stored tensor (bfloat16 as float32), and for int8
    tensors their ``name::scale`` and ``name::zero_point`` too."""
    out = {}
    for name, s in stored_tensors(model_or_state, qweights).items():
        out[name] = _bf16_to_f32(s["values"]) if s["dtype"] == "bfloat16" else s["values"]
        if "scale" in s:
            out[name + QSUFFIX_SCALE] = s["scale"]
            out[name + QSUFFIX_ZERO_POINT] = s["zero_point"]
    return out


def _bf16_to_f32(bits: np.ndarray) -> np.ndarray:
    return (bits.astype(np.uint32) << 16).view(np.float32)


def _zero_like(s: dict) -> np.ndarray:
    """The value that counts as zero at every position: 0, or the (per-channel) zero point."""
    a = s["values"]
    if "zero_point" not in s:
        return np.zeros(a.shape, dtype=a.dtype)
    zp = s["zero_point"]
    axis = s.get("axis")
    if s.get("group_size"):  # one zero point per group of inputs of each row (4-bit weight-only)
        rows, cols = a.shape
        return np.repeat(zp.reshape(rows, -1), s["group_size"], axis=1)[:, :cols].astype(a.dtype)
    if axis is None or zp.size == 1:
        return np.full(a.shape, zp.reshape(-1)[0], dtype=a.dtype)
    shape = [1] * a.ndim
    shape[axis] = -1
    return np.broadcast_to(zp.reshape(shape), a.shape).astype(a.dtype)


# -- relative-index sparse coding -------------------------------------------------------------

def sparse_entries(flat: np.ndarray, zero: np.ndarray, bits: int) -> tuple[np.ndarray, np.ndarray]:
    """Positions of the entries to store (nonzeros plus fillers) and their index gaps (< 2**bits)."""
    span = 1 << bits  # a filler advances by this many positions
    pos = np.flatnonzero(flat != zero)
    if pos.size == 0:
        return pos, pos.astype(np.uint8)
    prev = np.concatenate(([-1], pos[:-1]))
    gaps = pos - prev - 1
    k = gaps // span  # fillers before each nonzero
    if k.any():
        starts = np.repeat(prev, k)
        within = np.arange(int(k.sum())) - np.repeat(np.cumsum(k) - k, k) + 1
        pos = np.sort(np.concatenate((pos, starts + within * span)))
    idx = np.diff(np.concatenate(([-1], pos))) - 1
    assert idx.max(initial=0) < span
    return pos, idx.astype(np.uint8)


def _le(dtype_label: str) -> np.dtype:
    return np.dtype(np.uint16 if dtype_label == "bfloat16" else dtype_label).newbyteorder("<")


# -- the entropy coder: adaptive range coding of symbol streams ---------------------------------
# Every stream of small integers (relative indices, codebook indices, int8 values) is range
# coded (constriction's queue RangeEncoder) under an adaptive order-0 model: the probability of
# a symbol is its count so far plus ALPHA_MASS/K, updated every BLOCK symbols. No frequency
# table is stored (the decoder rebuilds the same counts), which is what makes this cheaper than
# a static Huffman code on the small layers of a pruned network.
BLOCK = 16
ALPHA_MASS = 8.0  # the prior's total pseudo-count, spread over the alphabet (KT's 1/2 at K=16)
_ROWS = 1 << 20  # probability-table entries handed to the coder at once (memory bound)


def _alpha(k: int) -> float:
    return min(0.5, ALPHA_MASS / k)


def _pieces(x: np.ndarray, k: int) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """``x`` (symbols < ``k``) in pieces of whole blocks, each with how often every symbol
    occurred before each of its blocks: (offset, piece, counts (blocks, k)); about _ROWS table
    entries a piece, so a large tensor never needs a (symbols x k) table at once."""
    x = x.astype(np.int64)
    step = max(BLOCK, (_ROWS // k) // BLOCK * BLOCK)
    running = np.zeros(k, dtype=np.int64)
    for i in range(0, x.size, step):
        piece = x[i:i + step]
        nb = -(-piece.size // BLOCK)
        h = np.bincount((np.arange(piece.size) // BLOCK) * k + piece, minlength=nb * k).reshape(nb, k)
        yield i, piece, np.cumsum(h, axis=0) - h + running
        running += h.sum(axis=0)


def stream_bits(x: np.ndarray, k: int) -> float:
    """Ideal code length in bits of ``x`` (symbols < ``k``) under the adaptive model."""
    if x.size == 0 or k <= 1:
        return 0.0
    a, bits = _alpha(k), 0.0
    for i, piece, before in _pieces(x, k):
        b = np.arange(piece.size) // BLOCK
        bits -= float(np.log2((before[b, piece] + a) / (i + b * BLOCK + k * a)).sum())
    return bits


def _range_encode(streams: list[tuple[np.ndarray, int]]) -> bytes:
    import constriction

    coder = constriction.stream.queue.RangeEncoder()
    family = constriction.stream.model.Categorical(perfect=False)
    for x, k in streams:
        if x.size == 0 or k <= 1:
            continue
        for _, piece, before in _pieces(x, k):
            probs = before.astype(np.float64) + _alpha(k)
            coder.encode(piece.astype(np.int32), family, probs[np.arange(piece.size) // BLOCK])
    return coder.get_compressed().astype("<u4").tobytes()


class _RangeDecoder:
    def __init__(self, data: bytes):
        import constriction

        if len(data) % 4:
            raise ValueError("truncated compressed model (range-coded words)")
        self._dec = constriction.stream.queue.RangeDecoder(np.frombuffer(data, dtype="<u4").astype(np.uint32))
        self._family = constriction.stream.model.Categorical(perfect=False)

    def take(self, n: int, k: int) -> np.ndarray:
        if n == 0 or k <= 1:
            return np.zeros(n, dtype=np.int64)
        out = np.empty(n, dtype=np.int64)
        counts = np.full(k, _alpha(k))
        for i in range(0, n, BLOCK):
            m = min(BLOCK, n - i)
            out[i:i + m] = self._dec.decode(self._family, np.broadcast_to(counts, (m, k)).copy())
            np.add.at(counts, out[i:i + m], 1)
        return out


# -- encode / decode --------------------------------------------------------------------------
# An option for one tensor: (encoding, entries, codebook meta, raw bytes, symbol streams).
_Option = tuple[str, "int | None", "dict | None", bytes, list]


def _is_int8(le: np.dtype) -> bool:
    return le.itemsize == 1 and le.kind in "iu"


def _values_part(vals: np.ndarray, le: np.dtype) -> tuple[bytes, list]:
    """Values as raw bytes (floats, wider integers) or, for 8-bit integers, a symbol stream."""
    if _is_int8(le):
        return b"", [(vals.astype(le).view(np.uint8), 256)]
    return vals.astype(le).tobytes(), []


def _plain_options(flat: np.ndarray, zero: np.ndarray, le: np.dtype) -> list[_Option]:
    raw, streams = _values_part(flat, le)
    out: list[_Option] = [("dense", None, None, raw, streams)]
    if flat.size > 1:
        for bits in (4, 8):
            pos, gaps = sparse_entries(flat, zero, bits)
            raw, streams = _values_part(flat[pos], le)
            out.append((f"sparse{bits}", len(pos), None, raw, [(gaps, 1 << bits), *streams]))
    return out


def _codebook_options(flat: np.ndarray, le: np.dtype) -> list[_Option]:
    """Encodings of a tensor through its codebook, when it has at most 256 values."""
    codebook, inv = np.unique(flat, return_inverse=True)
    if codebook.size > 256 or flat.size <= 1:
        return []
    idx = inv.reshape(-1).astype(np.uint8)
    c = int(codebook.size)
    cb_bytes = codebook.astype(le).tobytes()
    zeros = np.flatnonzero(codebook == 0)
    z = int(zeros[0]) if zeros.size else None
    out: list[_Option] = [("dense", None, {"c": c, "z": z}, cb_bytes, [(idx, c)])]
    if z is not None:
        for bits in (4, 8):
            pos, gaps = sparse_entries(idx, np.full(idx.shape, z, dtype=np.uint8), bits)
            # a filler sits on a zero: it carries the zero index
            out.append((f"sparse{bits}", len(pos), {"c": c, "z": z}, cb_bytes, [(gaps, 1 << bits), (idx[pos], c)]))
    return out


def _cost(option: _Option) -> float:
    return 8.0 * len(option[3]) + sum(stream_bits(x, k) for x, k in option[4])


def encode_tensors(tensors: dict[str, dict]) -> bytes:
    """Encode :func:`stored_tensors` output: per tensor the cheapest option; the header and raw
    bytes through the smallest of none/zlib/lzma, the symbol streams range coded."""
    header: list[list] = []
    blocks: list[bytes] = []
    streams: list[tuple[np.ndarray, int]] = []
    for name, s in tensors.items():
        a = np.asarray(s["values"])  # (np.ascontiguousarray would turn a 0-d buffer into 1-d)
        le = _le(s["dtype"])
        flat = np.ascontiguousarray(a).reshape(-1)
        q = None
        if "scale" in s:
            zp = s["zero_point"]
            zdt = "<i1" if zp.size == 0 or (zp.min() >= -128 and zp.max() <= 127) else "<i4"
            q = {"axis": s.get("axis"), "c": int(s["scale"].size), "z": zdt,
                 **({"g": s["group_size"]} if s.get("group_size") else {})}
            blocks += [s["scale"].astype("<f4").tobytes(), zp.astype(zdt).tobytes()]
        options = _plain_options(flat, _zero_like(s).reshape(-1), le) + _codebook_options(flat, le)
        enc, count, cb, raw, sym = min(options, key=_cost)
        header.append([name, list(a.shape), s["dtype"], enc, count, cb, q])
        blocks.append(raw)
        streams += sym
    hjson = json.dumps({"v": 2, "t": header}, separators=(",", ":")).encode()
    body = struct.pack("<I", len(hjson)) + hjson + b"".join(blocks)
    candidates = [(0, body), (1, zlib.compress(body, 9)),
                  (2, lzma.compress(body, format=lzma.FORMAT_RAW, filters=_LZMA_FILTERS))]
    code, coded = min(candidates, key=lambda c: (len(c[1]), c[0]))
    payload = struct.pack("<I", len(coded)) + coded + _range_encode(streams)
    return MAGIC + bytes([code]) + struct.pack("<I", zlib.crc32(bytes([code]) + payload)) + payload


def _split(data: bytes) -> tuple[int, bytes, bytes]:
    """(coder, the decoded header-and-raw body, the range-coded words), checksum verified."""
    if data[:4] != MAGIC:
        raise ValueError("not a squeezebench compressed model (bad magic)")
    if len(data) < 13:
        raise ValueError("truncated compressed model")
    code = data[4]
    (crc,) = struct.unpack_from("<I", data, 5)
    payload = data[9:]
    if zlib.crc32(data[4:5] + payload) != crc:
        raise ValueError("corrupt compressed model: checksum mismatch")
    (n,) = struct.unpack_from("<I", payload, 0)
    coded, words = payload[4:4 + n], payload[4 + n:]
    if len(coded) != n:
        raise ValueError("truncated compressed model")
    if code == 0:
        body = coded
    elif code == 1:
        body = zlib.decompress(coded)
    elif code == 2:
        body = lzma.decompress(coded, format=lzma.FORMAT_RAW, filters=_LZMA_FILTERS)
    else:
        raise ValueError(f"unknown coder byte {code}")
    return code, body, words


def _entries(body: bytes) -> tuple[list[dict], int]:
    (hlen,) = struct.unpack_from("<I", body, 0)
    header = json.loads(body[4:4 + hlen])
    if header.get("v") != 2:
        raise ValueError(f"unsupported compressed model version {header.get('v')!r}")
    keys = ("n", "s", "d", "e", "k", "cb", "q")
    return [{k: v for k, v in zip(keys, row) if v is not None} for row in header["t"]], 4 + hlen


def decode(data: bytes) -> dict[str, np.ndarray]:
    """Tensors back from :func:`encode` bytes, equal to :func:`reference_tensors` of the variant
    (same dtype, shape and values; a pruned ``-0.0`` comes back as ``0.0``, an equal value)."""
    _, body, words = _split(data)
    entries, off = _entries(body)
    symbols = _RangeDecoder(words)
    out: dict[str, np.ndarray] = {}

    def take(nbytes: int) -> bytes:
        nonlocal off
        chunk = body[off:off + nbytes]
        if len(chunk) != nbytes:
            raise ValueError("truncated compressed model")
        off += nbytes
        return chunk

    def values(count: int, le: np.dtype) -> np.ndarray:
        if _is_int8(le):
            return symbols.take(count, 256).astype(np.uint8).view(le)
        return np.frombuffer(take(count * le.itemsize), dtype=le)

    for e in entries:
        name, shape, label = e["n"], tuple(e["s"]), e["d"]
        le = _le(label)
        n = int(np.prod(shape)) if shape else 1
        s: dict = {"values": np.empty(shape, dtype=le.newbyteorder("=")), "dtype": label}
        if "q" in e:
            c, zdt = e["q"]["c"], np.dtype(e["q"]["z"])
            s["scale"] = np.frombuffer(take(4 * c), dtype="<f4").astype(np.float32)
            s["zero_point"] = np.frombuffer(take(zdt.itemsize * c), dtype=zdt).astype(np.int32)
            s["axis"] = e["q"]["axis"]
            if "g" in e["q"]:
                s["group_size"] = e["q"]["g"]
        if "cb" in e:
            flat = _decode_codebook(e, n, le, take, symbols)
        elif e["e"] == "dense":
            flat = values(n, le)
        else:
            k = e["k"]
            gaps = symbols.take(k, 16 if e["e"] == "sparse4" else 256)
            vals = values(k, le)
            flat = _zero_like(s).reshape(-1).copy()
            flat[_positions(gaps, n)] = vals
        a = np.asarray(flat, dtype=le.newbyteorder("=")).reshape(shape)
        out[name] = _bf16_to_f32(a) if label == "bfloat16" else a
        if "q" in e:
            out[name + QSUFFIX_SCALE] = s["scale"]
            out[name + QSUFFIX_ZERO_POINT] = s["zero_point"]
    if off != len(body):
        raise ValueError(f"{len(body) - off} trailing bytes after the last tensor")
    return out


def _positions(gaps: np.ndarray, n: int) -> np.ndarray:
    """Positions of the stored entries from their relative indices, checked against the size."""
    pos = np.cumsum(gaps + 1) - 1
    if pos.size and pos[-1] >= n:
        raise ValueError(f"relative index past the end of a tensor of {n} values")
    return pos


def _decode_codebook(e: dict, n: int, le: np.dtype, take, symbols: _RangeDecoder) -> np.ndarray:
    c, z = e["cb"]["c"], e["cb"]["z"]
    codebook = np.frombuffer(take(c * le.itemsize), dtype=le)
    if e["e"] == "dense":
        idx = symbols.take(n, c)
    else:
        k = e["k"]
        gaps = symbols.take(k, 16 if e["e"] == "sparse4" else 256)
        vals = symbols.take(k, c)
        idx = np.full(n, z, dtype=np.int64)
        idx[_positions(gaps, n)] = vals
    if idx.size and int(idx.max()) >= c:
        raise ValueError(f"codebook index {int(idx.max())} out of range for {c} entries")
    return codebook[idx]


def describe(data: bytes) -> dict:
    """The coder and per-tensor encodings of compressed bytes, and a one-word label."""
    code, body, words = _split(data)
    entries, _ = _entries(body)
    encs = {e["n"]: e["e"] + ("-codebook" if "cb" in e else "") for e in entries}
    sparse = any(v.startswith("sparse") for v in encs.values())
    q = any("q" in e for e in entries)
    shared = any("cb" in e for e in entries)
    grouped = any("g" in e.get("q", {}) for e in entries)
    label = ("sparse-relidx" if sparse else "dense") + ("-int4-grouped" if grouped else "-int8" if q else "") + ("-codebook" if shared else "") \
        + f"+{CODERS[code]}" + ("+range" if words else "")
    return {"coder": CODERS[code] + ("+range" if words else ""), "tensors": encs, "label": label, "bytes": len(data)}


def encode(variant: Any) -> bytes:
    """Compact bytes of a :class:`~squeezebench.workbench.Variant` (or anything with ``model``
    and optionally ``qweights``)."""
    return encode_tensors(stored_tensors(variant.model, getattr(variant, "qweights", None)))


def dequantize(decoded: dict[str, np.ndarray], name: str, axis: int | None = None,
               group_size: int | None = None) -> np.ndarray:
    """Float weights of an integer tensor from :func:`decode`: scale * (q - zero_point); with
    ``group_size`` (2-D, weight-only 4-bit) one scale per group of that many inputs per row."""
    q = decoded[name].astype(np.float32)
    scale, zp = decoded[name + QSUFFIX_SCALE], decoded[name + QSUFFIX_ZERO_POINT].astype(np.float32)
    if group_size:
        rows, cols = q.shape
        per = lambda a: np.repeat(a.reshape(rows, -1), group_size, axis=1)[:, :cols]  # noqa: E731
        return per(scale) * (q - per(zp))
    if scale.size > 1 and axis is not None:
        shape = [1] * q.ndim
        shape[axis] = -1
        scale, zp = scale.reshape(shape), zp.reshape(shape)
    return scale * (q - zp)


def write_compressed(variant: Any, out: Path) -> str:
    """Write ``model.sqz`` into ``out`` (a cache entry being built); returns its name."""
    (out / "model.sqz").write_bytes(encode(variant))
    return "model.sqz"
