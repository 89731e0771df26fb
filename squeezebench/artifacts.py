"""Writing the file each backend loads. Every function writes into a directory it is given
(a cache entry being built) and returns the main file's name."""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import torch
from torch import nn

ONNX_OPSET = 17


def write_torch(model: nn.Module, arch: dict, out: Path) -> str:
    """state_dict (loaded with weights_only=True) plus arch.json to rebuild the module."""
    torch.save({k: v.detach().clone() for k, v in model.state_dict().items()}, out / "model.pt")
    (out / "arch.json").write_text(json.dumps(arch, sort_keys=True))
    return "model.pt"


def write_onnx(model: nn.Module, in_shape: tuple[int, ...], out: Path, dtype: torch.dtype = torch.float32) -> str:
    """ONNX with a dynamic batch dimension (TorchScript exporter: fast, no onnxscript needed)."""
    model = model.eval()
    example = torch.zeros(1, *in_shape, dtype=dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model, (example,), str(out / "model.onnx"), dynamo=False, opset_version=ONNX_OPSET,
            input_names=["input"], output_names=["logits"],
            dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
        )
    return "model.onnx"


def write_openvino(onnx_file: Path, out: Path) -> str:
    """OpenVINO IR converted from an ONNX file, weights kept at their precision (no fp16 compression)."""
    import openvino as ov

    model = ov.convert_model(str(onnx_file))
    ov.save_model(model, str(out / "model.xml"), compress_to_fp16=False)
    return "model.xml"


def files_of(entry: Path, main: str) -> tuple[Path, ...]:
    """Every file a backend loads for ``main``: ONNX external data, the IR's .bin, arch.json."""
    main_path = entry / main
    files = [main_path]
    if main.endswith(".onnx"):
        import onnx

        m = onnx.load(str(main_path), load_external_data=False)
        ext = {e.value for t in m.graph.initializer for e in t.external_data if e.key == "location"}
        files += [entry / name for name in sorted(ext)]
    elif main.endswith(".xml"):
        files.append(main_path.with_suffix(".bin"))
    elif main.endswith(".pt"):
        files.append(entry / "arch.json")
    return tuple(files)
