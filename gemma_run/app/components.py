"""Config chooses code: the class a group's ``_target_`` names, checked against the interface it must implement.

The quant backends (``quant/``) and the launchers (``distributed/launchers/``) are built this way, so a bad
``_target_`` is one error naming the key and the fix, never an import traceback. Imports no torch.
"""

from __future__ import annotations

from typing import Any


def component(group: str, cfg: Any, base: type, default: str) -> Any:
    """An instance of the class ``cfg._target_`` names (``default`` when unset), given ``cfg``.

    Raises ConfigError at ``<group>._target_`` when the class does not import or is not a ``base`` subclass."""
    import importlib

    from gemma_run.app.errors import ConfigError

    key = f"{group}._target_"
    interface = f"{base.__module__}.{base.__qualname__}"
    target = cfg.get("_target_") or default
    module, _, name = str(target).rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError) as e:  # ValueError: no module part
        raise ConfigError(f"{key}={target!r} cannot be imported: {e}", key=key,
                          fix=f"a {interface} subclass, e.g. {default}") from e
    if not (isinstance(cls, type) and issubclass(cls, base)):
        raise ConfigError(f"{key}={target!r} is not a {base.__qualname__} subclass", key=key,
                          fix=f"subclass {interface}")
    return cls(cfg)
