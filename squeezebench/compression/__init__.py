"""Compression techniques: configs (what), handlers (how), one entry point (apply_chain).

Importing this package registers every technique."""
import importlib
import pkgutil

from squeezebench.compression.base import (
    ChainState, CompressionConfig, ConfigError, apply_chain, build_variant, config_types,
    parse_variant_id, register_handler, variant_id,
)

# Every module of this package defines a technique and registers it when imported: adding one is
# adding its module (and its test), nothing else.
for _mod in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_mod.name}")

__all__ = ["ChainState", "CompressionConfig", "ConfigError", "apply_chain", "build_variant",
           "config_types", "parse_variant_id", "register_handler", "variant_id"]
