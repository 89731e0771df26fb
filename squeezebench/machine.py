"""Facts about the machine, for pytest_benchmark_update_machine_info and records."""
from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import platform
import re
import socket
from collections.abc import Iterable

from squeezebench.settings import available_cores

# CPU features that decide which kernels the runtimes pick (oneDNN, MLAS, OpenVINO's CPU plugin):
# two machines that differ in one of them are different machines for latency. Linux names;
# py-cpuinfo's cpuid names drop the underscore (avx512vnni), so compare with flag_key().
KERNEL_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "avx512_fp16", "avx_vnni",
                "amx_tile", "amx_bf16", "amx_int8", "asimd", "asimddp", "i8mm", "sve", "bf16")

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


def flag_key(flag: str) -> str:
    """A CPU flag name as both /proc/cpuinfo and py-cpuinfo's cpuid spell it."""
    return flag.lower().replace("_", "")


def kernel_flags(flags: Iterable[str]) -> list[str]:
    """The KERNEL_FLAGS among ``flags`` (any spelling), in KERNEL_FLAGS order."""
    have = {flag_key(f) for f in flags}
    return [f for f in KERNEL_FLAGS if flag_key(f) in have]


def parse_cpuinfo(text: str) -> dict:
    """Vendor, family, model and kernel-relevant flags of the first CPU in /proc/cpuinfo text
    (x86: vendor_id, cpu family, model, flags; Arm: CPU implementer, architecture, part, Features)."""
    first: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip():
            if first:
                break
            continue
        k, _, v = line.partition(":")
        first.setdefault(k.strip().lower(), v.strip())

    def intish(v: str | None) -> int | str | None:
        for base in (10, 16):  # x86 family/model are decimal, Arm's part is 0x...
            try:
                return int(v, base) if v is not None else None
            except ValueError:
                pass
        return v

    flags = (first.get("flags") or first.get("features") or "").split()
    return {
        "cpu_vendor": first.get("vendor_id") or first.get("cpu implementer"),
        "cpu_family": intish(first.get("cpu family") or first.get("cpu architecture")),
        "cpu_model_id": intish(first.get("model") if "cpu family" in first else first.get("cpu part")),
        # None: no flag list here (not Linux); [] would claim none of them is present.
        "cpu_isa": kernel_flags(flags) if flags else None,
    }


@functools.lru_cache(maxsize=None)
def cpu_identity() -> dict:
    """What decides CPU speed besides the core count, from /proc/cpuinfo (no py-cpuinfo needed)."""
    try:
        with open("/proc/cpuinfo") as f:
            return parse_cpuinfo(f.read())
    except OSError:
        return {"cpu_vendor": None, "cpu_family": None, "cpu_model_id": None, "cpu_isa": None}


def safe_machine_name(name: str) -> str:
    """``name`` as a folder-name part: letters, digits, ``.``, ``_`` and ``-`` (anything else
    becomes ``-``), at most 64 characters; '' when nothing is left."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-.")[:64]


@functools.lru_cache(maxsize=None)
def default_machine_name() -> str:
    """``<host>-<cpuhash>``: the short host name and 6 hex digits of a hash of the CPU model
    and the identity that decides kernels (vendor, family, model, KERNEL_FLAGS). Stable across
    runs of one host; a host moved to another CPU type (a resized VM) gets a new name, so its
    runs are not mixed with the old CPU's."""
    ident = cpu_identity()
    text = "|".join([cpu_model_name(), str(ident.get("cpu_vendor")), str(ident.get("cpu_family")),
                     str(ident.get("cpu_model_id")), " ".join(ident.get("cpu_isa") or [])])
    host = safe_machine_name((socket.gethostname() or platform.node() or "host").split(".")[0]) or "host"
    return f"{host}-{hashlib.sha256(text.encode()).hexdigest()[:6]}"


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
        **cpu_identity(),
        "cpu_cores_available": available_cores(),
        "cpu_cores_physical": psutil.cpu_count(logical=False),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "gpus": gpu_names() or ["none"],
        "libraries": library_versions(),
    }
