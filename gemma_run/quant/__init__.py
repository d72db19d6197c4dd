"""Quantization backends as components: one class per backend behind :class:`~gemma_run.quant.base.QuantBackend`.

The ``quant`` group's ``_target_`` names the class (``conf/quant/*.yaml``); :func:`from_cfg` builds it. Adding a
backend takes a module with a ``QuantBackend`` subclass and a YAML that names it (docs/quant.md). Importing this
package (and ``from_cfg``) imports no torch: backends import their libraries inside their methods.
"""

from __future__ import annotations

import functools
from typing import Any

from gemma_run.quant.base import QuantBackend

DEFAULT_TARGET = "gemma_run.quant.none.NoQuant"
# The backends shipped with gemma-run: the planner finds the one that stores a storage mode among them.
BUILT_IN = (DEFAULT_TARGET, "gemma_run.quant.bitsandbytes.BitsAndBytes", "gemma_run.quant.torchao.TorchAoInt4")


def from_cfg(quant_cfg: Any) -> QuantBackend:
    """The backend object for a composed ``quant`` group (its ``_target_`` class, given the group)."""
    from gemma_run.app.components import component

    return component("quant", quant_cfg, QuantBackend, DEFAULT_TARGET)


@functools.cache
def planner_backend(mode: str, target: str = "") -> type[QuantBackend]:
    """The backend class that stores the planner's storage ``mode``: ``target`` (a ``_target_``) when given, else
    the built-in backend whose ``planner_modes`` has it."""
    from hydra.utils import get_class

    for name in [target] if target else BUILT_IN:
        cls = get_class(name)
        if mode in getattr(cls, "planner_modes", {}):
            return cls
    raise ValueError(f"no quant backend stores the planner's mode {mode!r}" + (f" ({target})" if target else ""))


__all__ = ["QuantBackend", "from_cfg", "planner_backend"]
