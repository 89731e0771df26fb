"""``package.module:callable`` specs: the user's own code, named on the command line.

At the bottom of the import graph (stdlib only): the model sources (``squeezebench.models``)
and the dataset loaders (``squeezebench.data``) both resolve specs through here and wrap
:class:`SpecError` into their own error types.

Importing a user's module writes no ``__pycache__`` into their directory (bytecode writing is
off while it is imported). A module is looked up on ``sys.path`` as usual, then in the current
directory.
"""
from __future__ import annotations

import importlib
import inspect
import os
import re
import sys
from pathlib import Path
from typing import Any, Callable

# package.module:attr (attr may be dotted: module:Class.factory)
CALLABLE_SPEC = re.compile(r"^[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*$")


class SpecError(ValueError):
    """A ``module:callable`` spec that cannot be resolved; the message says why and what to do."""


def is_callable_spec(spec: str) -> bool:
    return bool(CALLABLE_SPEC.match(spec))


def oneline(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}".rstrip(": ")


def _import(module_name: str) -> Any:
    before = sys.dont_write_bytecode
    sys.dont_write_bytecode = True  # nothing is written next to the user's module
    try:
        try:
            return importlib.import_module(module_name)
        except ModuleNotFoundError as e:
            cwd = os.getcwd()
            top = module_name.split(".")[0]
            if e.name != top or cwd in sys.path or "" in sys.path:
                raise
            sys.path.append(cwd)  # the current directory, as `python -m` would have it
            importlib.invalidate_caches()
            return importlib.import_module(module_name)
    finally:
        sys.dont_write_bytecode = before


def import_callable(spec: str) -> tuple[Callable[..., Any], Path | None]:
    """The callable named by ``spec`` (``package.module:name`` or ``module:Class.attr``) and the
    file that defines it (None when it has none), or :class:`SpecError`."""
    if not is_callable_spec(spec):
        raise SpecError(f"{spec!r} is not of the form package.module:callable")
    module_name, _, attr = spec.partition(":")
    try:
        obj: Any = _import(module_name)
    except Exception as e:  # ImportError, or whatever the module raises on import
        raise SpecError(
            f"cannot import module {module_name!r} ({oneline(e)}); it must be importable: installed, "
            f"on PYTHONPATH, or a .py file in the current directory ({os.getcwd()})") from None
    module_file = getattr(obj, "__file__", None)
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            names = [n for n in dir(obj) if not n.startswith("_") and callable(getattr(obj, n, None))]
            raise SpecError(f"{module_name} ({module_file}) has no attribute {part!r}; its callables: "
                            f"{', '.join(names[:15]) or 'none'}") from None
    if not callable(obj):
        raise SpecError(f"{spec} is a {type(obj).__name__}, not a callable ({module_file})")
    return obj, source_file_of(obj, module_file)


def source_file_of(obj: Any, fallback: str | None = None) -> Path | None:
    """The file that defines ``obj`` (a function, class or partial), else ``fallback``."""
    target = getattr(obj, "func", obj)  # functools.partial
    try:
        src = inspect.getsourcefile(target)
    except TypeError:
        src = None
    src = src or fallback
    return Path(src) if src and Path(src).is_file() else None
