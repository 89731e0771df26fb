"""Compression techniques: configs (what), handlers (how), one entry point (apply_chain).

Importing this package registers every technique."""
from squeezebench.compression.base import (
    ChainState, CompressionConfig, ConfigError, apply_chain, build_variant, config_types,
    parse_variant_id, register_handler, variant_id,
)
from squeezebench.compression import precision  # noqa: F401  (registers)
from squeezebench.compression import quantize  # noqa: F401  (registers)
from squeezebench.compression import distill, prune, share, structured  # noqa: F401  (register)

__all__ = ["ChainState", "CompressionConfig", "ConfigError", "apply_chain", "build_variant",
           "config_types", "parse_variant_id", "register_handler", "variant_id"]
