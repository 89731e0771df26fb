"""Runtimes. Importing this package registers every backend and the exporter of its artifact
format; none imports its runtime until it is used, so a missing optional library only skips that
backend."""
import importlib
import pkgutil

from squeezebench.backends.base import (
    Artifact, Backend, BackendUnavailable, Exporter, Session, exporter_for, get_backend, get_exporter,
    list_backends, register_backend, register_exporter, register_file_exporter, support,
)
# Every module of this package is imported (each backend registers itself and its exporter), so
# adding a runtime is adding its module (and its test), nothing else. torch's first: the
# reference runtime leads the lists of backends and of a variant's formats; the rest by name.
for _name in sorted((m.name for m in pkgutil.iter_modules(__path__)), key=lambda n: (n != "torch_backend", n)):
    importlib.import_module(f"{__name__}.{_name}")

__all__ = ["Artifact", "Backend", "BackendUnavailable", "Exporter", "Session", "exporter_for", "get_backend",
           "get_exporter", "list_backends", "register_backend", "register_exporter", "register_file_exporter",
           "support"]
