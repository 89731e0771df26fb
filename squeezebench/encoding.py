"""An honest compact encoding of a variant's weights (``model.sqz``): what the model costs to
store when zeros are not stored and int8 weights are stored as int8. We write it and read it back
to identical tensors (:func:`decode`), so ``compressed_bytes`` is a size we can stand behind.

Per tensor, the smallest of (sizes before the entropy coder):

* ``dense``: every value, in the dtype the variant stores it (float32/float16/float64, bfloat16
  as its 16 bits, int64 buffers as int64);
* ``sparse4`` / ``sparse8``: Deep Compression's relative indices (Han et al. 2016): the
  nonzero values in order, each with the count of zeros before it in 4 or 8 bits; a gap longer
  than the field holds is bridged with filler entries (index 15 or 255, value zero);
* for a tensor with at most 256 distinct values (weight sharing,
  :mod:`squeezebench.compression.share`; the 4-bit codes of
  :mod:`squeezebench.compression.weight_only`), each of the above over its codebook indices instead
  of its values: the codebook (the distinct values, in the stored dtype), then 4-bit indices when
  it has at most 16 entries, else 8-bit; "zero" is the index of the value 0.

Values come from the variant's ``qweights`` (int8, with their per-tensor or per-channel scale
and zero point; 4-bit weight-only codes with one scale per group, the group size in the
header) when a quantize step set them, else from ``model.state_dict()`` exactly. For
int8 tensors "zero" means the zero point. The whole body (a compact JSON header and the
payload) then goes through zlib or lzma from the standard library when that is smaller; the
coder used is in the file and in :func:`describe`'s label, e.g. ``sparse-relidx+lzma``.

Layout: ``b"SQZ1"``, one coder byte (0 none, 1 zlib, 2 lzma raw LZMA2), then the coded body:
``uint32 little-endian header length``, header JSON, payload blocks in header order
(per tensor: [float32 scales][zero points, int8 when they fit, else int32] for int8 tensors, or
[codebook] for shared tensors, then [relative indices][values] or [values], values being codebook
indices for shared tensors).
"""
from __future__ import annotations

import json
import lzma
import struct
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import torch

MAGIC = b"SQZ1"
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


def _pack4(idx: np.ndarray) -> bytes:
    if idx.size % 2:
        idx = np.concatenate((idx, [0])).astype(np.uint8)
    return (idx[0::2] | (idx[1::2] << 4)).astype(np.uint8).tobytes()


def _unpack4(buf: bytes, n: int) -> np.ndarray:
    b = np.frombuffer(buf, dtype=np.uint8)
    out = np.empty(b.size * 2, dtype=np.uint8)
    out[0::2] = b & 0x0F
    out[1::2] = b >> 4
    return out[:n]


def _le(dtype_label: str) -> np.dtype:
    return np.dtype(np.uint16 if dtype_label == "bfloat16" else dtype_label).newbyteorder("<")


# -- encode / decode --------------------------------------------------------------------------

def _codebook_options(flat: np.ndarray, le: np.dtype) -> list[tuple]:
    """Encodings of a tensor through its codebook, when it has at most 256 values."""
    codebook, inv = np.unique(flat, return_inverse=True)
    if codebook.size > 256:
        return []
    idx = inv.reshape(-1).astype(np.uint8)
    narrow = codebook.size <= 16

    def pack(a: np.ndarray) -> bytes:
        return _pack4(a) if narrow else a.tobytes()

    cb_bytes = codebook.astype(le).tobytes()
    zeros = np.flatnonzero(codebook == 0)
    z = int(zeros[0]) if zeros.size else None
    out = [("dense", None, {"c": int(codebook.size), "z": z}, cb_bytes + pack(idx))]
    if z is not None:
        for bits in (4, 8):
            pos, gaps = sparse_entries(idx, np.full(idx.shape, z, dtype=np.uint8), bits)
            vals = idx[pos]  # a filler sits on a zero: it carries the zero index
            out.append((f"sparse{bits}", len(pos), {"c": int(codebook.size), "z": z},
                        cb_bytes + (_pack4(gaps) if bits == 4 else gaps.tobytes()) + pack(vals)))
    return out


def encode_tensors(tensors: dict[str, dict]) -> bytes:
    """Encode :func:`stored_tensors` output; the smallest of none/zlib/lzma over the body."""
    header: list[dict] = []
    blocks: list[bytes] = []
    for name, s in tensors.items():
        a = np.asarray(s["values"])  # (np.ascontiguousarray would turn a 0-d buffer into 1-d)
        le = _le(s["dtype"])
        flat = np.ascontiguousarray(a).reshape(-1)
        entry: dict = {"n": name, "s": list(a.shape), "d": s["dtype"]}
        if "scale" in s:
            zp = s["zero_point"]
            zdt = "<i1" if zp.size == 0 or (zp.min() >= -128 and zp.max() <= 127) else "<i4"
            entry["q"] = {"axis": s.get("axis"), "c": int(s["scale"].size), "z": zdt,
                          **({"g": s["group_size"]} if s.get("group_size") else {})}
            blocks += [s["scale"].astype("<f4").tobytes(), zp.astype(zdt).tobytes()]
        options = [("dense", None, None, flat.astype(le).tobytes())]
        if flat.size > 1:
            zero = _zero_like(s).reshape(-1)
            for bits in (4, 8):
                pos, idx = sparse_entries(flat, zero, bits)
                ib = _pack4(idx) if bits == 4 else idx.tobytes()
                options.append((f"sparse{bits}", len(pos), None, ib + flat[pos].astype(le).tobytes()))
            # Few distinct values (weight sharing; 4-bit codes): indices into a codebook.
            options += _codebook_options(flat, le)
        enc, count, cb, blob = min(options, key=lambda o: len(o[3]))
        entry["e"] = enc
        if count is not None:
            entry["k"] = count
        if cb is not None:
            entry["cb"] = cb
        header.append(entry)
        blocks.append(blob)
    hjson = json.dumps({"v": 1, "t": header}, separators=(",", ":")).encode()
    body = struct.pack("<I", len(hjson)) + hjson + b"".join(blocks)
    candidates = [(0, body), (1, zlib.compress(body, 9)),
                  (2, lzma.compress(body, format=lzma.FORMAT_RAW, filters=_LZMA_FILTERS))]
    code, coded = min(candidates, key=lambda c: (len(c[1]), c[0]))
    return MAGIC + bytes([code]) + coded


def _body(data: bytes) -> tuple[int, bytes]:
    if data[:4] != MAGIC:
        raise ValueError("not a squeezebench compressed model (bad magic)")
    code = data[4]
    if code == 0:
        return code, data[5:]
    if code == 1:
        return code, zlib.decompress(data[5:])
    if code == 2:
        return code, lzma.decompress(data[5:], format=lzma.FORMAT_RAW, filters=_LZMA_FILTERS)
    raise ValueError(f"unknown coder byte {code}")


def _header(body: bytes) -> tuple[dict, int]:
    (hlen,) = struct.unpack_from("<I", body, 0)
    return json.loads(body[4:4 + hlen]), 4 + hlen


def decode(data: bytes) -> dict[str, np.ndarray]:
    """Tensors back from :func:`encode` bytes, equal to :func:`reference_tensors` of the variant
    (same dtype, shape and values; a pruned ``-0.0`` comes back as ``0.0``, an equal value)."""
    _, body = _body(data)
    header, off = _header(body)
    out: dict[str, np.ndarray] = {}

    def take(nbytes: int) -> bytes:
        nonlocal off
        chunk = body[off:off + nbytes]
        if len(chunk) != nbytes:
            raise ValueError("truncated compressed model")
        off += nbytes
        return chunk

    for e in header["t"]:
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
            flat = _decode_codebook(e, n, le, take)
        elif e["e"] == "dense":
            flat = np.frombuffer(take(n * le.itemsize), dtype=le)
        else:
            k = e["k"]
            idx = _unpack4(take((k + 1) // 2), k) if e["e"] == "sparse4" else np.frombuffer(take(k), dtype=np.uint8)
            vals = np.frombuffer(take(k * le.itemsize), dtype=le)
            flat = _zero_like(s).reshape(-1).copy()
            pos = np.cumsum(idx.astype(np.int64) + 1) - 1
            flat[pos] = vals
        a = np.asarray(flat, dtype=le.newbyteorder("=")).reshape(shape)
        out[name] = _bf16_to_f32(a) if label == "bfloat16" else a
        if "q" in e:
            out[name + QSUFFIX_SCALE] = s["scale"]
            out[name + QSUFFIX_ZERO_POINT] = s["zero_point"]
    if off != len(body):
        raise ValueError(f"{len(body) - off} trailing bytes after the last tensor")
    return out


def _decode_codebook(e: dict, n: int, le: np.dtype, take) -> np.ndarray:
    c, z = e["cb"]["c"], e["cb"]["z"]
    codebook = np.frombuffer(take(c * le.itemsize), dtype=le)

    def unpack(count: int) -> np.ndarray:
        return _unpack4(take((count + 1) // 2), count) if c <= 16 else np.frombuffer(take(count), dtype=np.uint8)

    if e["e"] == "dense":
        idx = unpack(n)
    else:
        k = e["k"]
        gaps = _unpack4(take((k + 1) // 2), k) if e["e"] == "sparse4" else np.frombuffer(take(k), dtype=np.uint8)
        vals = unpack(k)
        idx = np.full(n, z, dtype=np.uint8)
        idx[np.cumsum(gaps.astype(np.int64) + 1) - 1] = vals
    if idx.size and int(idx.max()) >= c:
        raise ValueError(f"codebook index {int(idx.max())} out of range for {c} entries")
    return codebook[idx]


def describe(data: bytes) -> dict:
    """The coder and per-tensor encodings of compressed bytes, and a one-word label."""
    code, body = _body(data)
    header, _ = _header(body)
    encs = {e["n"]: e["e"] + ("-codebook" if "cb" in e else "") for e in header["t"]}
    sparse = any(v.startswith("sparse") for v in encs.values())
    q = any("q" in e for e in header["t"])
    shared = any("cb" in e for e in header["t"])
    grouped = any("g" in e.get("q", {}) for e in header["t"])
    label = ("sparse-relidx" if sparse else "dense") + ("-int4-grouped" if grouped else "-int8" if q else "") + ("-codebook" if shared else "") \
        + f"+{CODERS[code]}"
    return {"coder": CODERS[code], "tensors": encs, "label": label, "bytes": len(data)}


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
