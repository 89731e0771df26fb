"""Runtimes. Importing this package registers every backend; none imports its runtime
until it is used, so a missing optional library only skips that backend."""
from squeezebench.backends.base import (
    Artifact, Backend, BackendUnavailable, Session, get_backend, list_backends, register_backend,
)
from squeezebench.backends import torch_backend, onnxruntime_backend, openvino_backend  # noqa: F401

__all__ = ["Artifact", "Backend", "BackendUnavailable", "Session", "get_backend", "list_backends",
           "register_backend"]
