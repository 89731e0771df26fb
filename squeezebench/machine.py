"""Facts about the machine, for pytest_benchmark_update_machine_info and records."""
from __future__ import annotations

import functools
import importlib.metadata
import platform

from squeezebench.settings import available_cores

LIBRARIES = ("torch", "torchvision", "onnx", "onnxruntime", "openvino", "nncf", "torch-pruning",
             "torchao", "numpy", "psutil", "nvidia-ml-py", "pytest-benchmark")


@functools.lru_cache(maxsize=None)
def cpu_model_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def library_versions() -> dict[str, str]:
    out = {}
    for lib in LIBRARIES:
        try:
            out[lib] = importlib.metadata.version(lib)
        except importlib.metadata.PackageNotFoundError:
            out[lib] = "not installed"
    return out


def gpu_names() -> list[str]:
    try:
        import torch

        if torch.cuda.is_available():
            return [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    except Exception:  # a broken CUDA install must not break the machine record
        pass
    return []


def machine_facts() -> dict:
    import psutil

    return {
        "cpu_model": cpu_model_name(),
        "cpu_cores_available": available_cores(),
        "cpu_cores_physical": psutil.cpu_count(logical=False),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "gpus": gpu_names() or ["none"],
        "libraries": library_versions(),
    }
