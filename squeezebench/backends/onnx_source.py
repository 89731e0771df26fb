"""The artifacts of an exported ONNX file (``--sb-models onnx:<path>``, ``ExportSpec.source_file``):
the formats whose runtimes start from ONNX, written from the file instead of a torch module.

* ``onnx`` (ONNX Runtime): fp32 is the file itself (copied; external data re-saved beside it); fp16
  is ONNX Runtime's ``convert_float_to_float16`` of it (fp16 inputs and outputs, as torch's fp16
  export); int8 is ``quantize_static`` (QDQ, MinMax on the spec's calibration images) or
  ``quantize_dynamic`` of its pre-processed copy, through the same recipe functions as the torch
  path (``onnxruntime_backend.quantize_static_file`` / ``quantize_dynamic_file``);
* ``openvino``: the IR converted from the file (f16 weights for fp16); static int8 through the
  same ``openvino_backend.nncf_quantize_static``. OpenVINO keeps its own skip of dynamic int8.

The torch format has no file exporter: the torch backends skip such variants with the reason
(``squeezebench.backends.base.support``).
"""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path


import squeezebench.backends.onnx_export as onnx_export
from squeezebench.backends.base import Exporter, Writer, register_file_exporter
from squeezebench.backends.onnxruntime_backend import preprocessed, quantize_dynamic_file, quantize_static_file
from squeezebench.backends.openvino_backend import _save as save_ir
from squeezebench.backends.openvino_backend import nncf_quantize_static
from squeezebench.domain import Variant
from squeezebench.keys import produced_by


def _input_name(path: Path) -> str:
    import onnx

    g = onnx.load(str(path), load_external_data=False).graph
    inits = {t.name for t in g.initializer}
    return next(i.name for i in g.input if i.name not in inits)


def _save_onnx(model, out: Path) -> str:
    """``model.onnx``, its tensors in one external ``model.onnx.data`` when it is too big for one
    protobuf (2 GB)."""
    import onnx

    try:
        big = model.ByteSize() > 1_900_000_000
    except Exception:  # protobuf refuses to size it
        big = True
    onnx.save(model, str(out / "model.onnx"), save_as_external_data=big, location="model.onnx.data")
    return "model.onnx"


@produced_by("onnx")
def _write_ort_fp32(v: Variant, out: Path) -> str:
    import onnx

    src = v.export.source_file
    m = onnx.load(str(src), load_external_data=False)
    if not any(t.data_location == onnx.TensorProto.EXTERNAL for t in m.graph.initializer):
        shutil.copyfile(src, out / "model.onnx")  # the file itself, byte for byte
        return "model.onnx"
    return _save_onnx(onnx.load(str(src)), out)


@produced_by("onnx", "onnxruntime")
def _write_ort_fp16(v: Variant, out: Path) -> str:
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    return _save_onnx(convert_float_to_float16(onnx.load(str(v.export.source_file)), keep_io_types=False), out)


@produced_by("onnx", "onnxruntime")
def _write_ort_static(v: Variant, out: Path) -> str:
    q, src = v.export.quantization, v.export.source_file
    with tempfile.TemporaryDirectory() as work:
        quantize_static_file(preprocessed(src, Path(work)), out / "model.onnx", q.calibration, q.per_channel,
                             input_name=_input_name(src))
    return "model.onnx"


@produced_by("onnx", "onnxruntime")
def _write_ort_dynamic(v: Variant, out: Path) -> str:
    with tempfile.TemporaryDirectory() as work:
        quantize_dynamic_file(preprocessed(v.export.source_file, Path(work)), out / "model.onnx",
                              v.export.quantization.per_channel)
    return "model.onnx"


@produced_by("onnx", "openvino")
def _write_ir(v: Variant, out: Path) -> str:
    import openvino as ov

    return save_ir(ov.convert_model(str(v.export.source_file)), v, out)


@produced_by("onnx", "openvino", "nncf")
def _write_ir_static(v: Variant, out: Path) -> str:
    import openvino as ov

    q = v.export.quantization
    ov_model = ov.convert_model(str(v.export.source_file))
    return save_ir(nncf_quantize_static(ov_model, q.calibration, q.per_channel), v, out)


def _unsupported(v: Variant) -> str:
    q = v.export.quantization
    what = f"{q.method} int8" if q is not None else v.export.dtype
    return f"no {what} artifact is written from an exported file (runtime-side: fp32, fp16, int8 static/dynamic)"


_ORT = {"float32": _write_ort_fp32, "float16": _write_ort_fp16}
_ORT_INT8 = {"static": _write_ort_static, "dynamic": _write_ort_dynamic}
_ORT_TOOLS = {
    "static": "onnxruntime.quantization.quantize_static of the ONNX file (QDQ, MinMax, U8S8, reduce_range: "
              "7-bit weights)",
    "dynamic": "onnxruntime.quantization.quantize_dynamic of the ONNX file (MatMulInteger/ConvInteger, "
               "reduce_range: 7-bit weights)",
}


@register_file_exporter
class OnnxFileExporter(Exporter):
    """``model.onnx`` from the exported file: itself (fp32), ONNX Runtime's fp16 conversion, or its
    quantization tools (int8 static and dynamic)."""

    format = "onnx"

    def writer(self, v: Variant) -> Writer:
        q = v.export.quantization
        w = _ORT_INT8.get(q.method) if q is not None else _ORT.get(v.export.dtype)
        if w is None:
            raise ValueError(_unsupported(v))
        return w

    def code(self) -> tuple:
        return (type(self),)

    def files(self, entry: Path, main: str) -> tuple[Path, ...]:
        return onnx_export.onnx_files(entry, main)

    def tool(self, v: Variant) -> str | None:
        q = v.export.quantization
        return _ORT_TOOLS.get(q.method) if q is not None else None


@register_file_exporter
class OpenVINOFileExporter(Exporter):
    """``model.xml`` + ``model.bin`` converted from the exported file (f16 weights for fp16); static
    int8 is ``nncf.quantize`` on it."""

    format = "openvino"

    def writer(self, v: Variant) -> Writer:
        q = v.export.quantization
        if q is None and v.export.dtype in ("float32", "float16"):
            return _write_ir
        if q is not None and q.method == "static":
            return _write_ir_static
        raise ValueError(_unsupported(v))

    def code(self) -> tuple:
        return (type(self),)

    def files(self, entry: Path, main: str) -> tuple[Path, ...]:
        return (entry / main, (entry / main).with_suffix(".bin"))

    def tool(self, v: Variant) -> str | None:
        q = v.export.quantization
        if q is not None and q.method == "static":
            return ("nncf.quantize on the OpenVINO model converted from the ONNX file (overflow_fix=ENABLE: "
                    "7-bit weights; global min/max activation ranges)")
        return None
