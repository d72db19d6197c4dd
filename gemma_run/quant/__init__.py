"""Quantization backends as components: one class per backend behind :class:`~gemma_run.quant.base.QuantBackend`.

The ``quant`` group's ``_target_`` names the class (``conf/quant/*.yaml``); :func:`from_cfg` builds it. Adding a
backend takes a module with a ``QuantBackend`` subclass and a YAML that names it (docs/quant.md). Importing this
package (and ``from_cfg``) imports no torch: backends import their libraries inside their methods.
"""

from __future__ import annotations

from typing import Any

from gemma_run.quant.base import QuantBackend

DEFAULT_TARGET = "gemma_run.quant.none.NoQuant"


def from_cfg(quant_cfg: Any) -> QuantBackend:
    """The backend object for a composed ``quant`` group (its ``_target_`` class, given the group)."""
    from hydra.utils import get_class

    from gemma_run.app.errors import ConfigError

    target = quant_cfg.get("_target_") or DEFAULT_TARGET
    try:
        cls = get_class(target)
    except Exception as e:  # ImportError or a missing attribute, wrapped by Hydra
        raise ConfigError(f"quant._target_={target!r} cannot be imported: {e}", key="quant._target_",
                          fix="a gemma_run.quant.base.QuantBackend subclass, e.g. gemma_run.quant.none.NoQuant") \
            from e
    if not (isinstance(cls, type) and issubclass(cls, QuantBackend)):
        raise ConfigError(f"quant._target_={target!r} is not a QuantBackend subclass", key="quant._target_",
                          fix="subclass gemma_run.quant.base.QuantBackend")
    return cls(quant_cfg)


__all__ = ["QuantBackend", "from_cfg"]
