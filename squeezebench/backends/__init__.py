"""Runtimes. Importing this package registers every backend and the exporter of its artifact
format; none imports its runtime until it is used, so a missing optional library only skips that
backend."""
from squeezebench.backends.base import (
    Artifact, Backend, BackendUnavailable, Exporter, Session, exporter_for, get_backend, get_exporter,
    list_backends, register_backend, register_exporter, register_file_exporter, support,
)
from squeezebench.backends import torch_backend, onnxruntime_backend, openvino_backend  # noqa: F401
from squeezebench.backends import onnx_source  # noqa: F401  (the formats written from an exported file)

__all__ = ["Artifact", "Backend", "BackendUnavailable", "Exporter", "Session", "exporter_for", "get_backend",
           "get_exporter", "list_backends", "register_backend", "register_exporter", "register_file_exporter",
           "support"]
