"""Launchers as components: one class per way of starting a run's processes, behind
:class:`~gemma_run.distributed.launchers.base.Launcher`.

The ``launcher`` group's ``_target_`` names the class (``conf/launcher/*.yaml``); :func:`from_cfg` builds it. Adding a
launcher takes a module with a ``Launcher`` subclass and a YAML that names it. Importing this package imports nothing
heavy.
"""

from __future__ import annotations

from typing import Any

from gemma_run.distributed.launchers.base import Launcher

DEFAULT_TARGET = "gemma_run.distributed.launchers.local.Local"


def from_cfg(launcher_cfg: Any) -> Launcher:
    """The launcher object for a composed ``launcher`` group (its ``_target_`` class, given the group)."""
    from hydra.utils import get_class

    from gemma_run.app.errors import ConfigError

    target = launcher_cfg.get("_target_") or DEFAULT_TARGET
    try:
        cls = get_class(target)
    except Exception as e:  # ImportError or a missing attribute, wrapped by Hydra
        raise ConfigError(f"launcher._target_={target!r} cannot be imported: {e}", key="launcher._target_",
                          fix=f"a gemma_run.distributed.launchers.base.Launcher subclass, e.g. {DEFAULT_TARGET}") \
            from e
    if not (isinstance(cls, type) and issubclass(cls, Launcher)):
        raise ConfigError(f"launcher._target_={target!r} is not a Launcher subclass", key="launcher._target_",
                          fix="subclass gemma_run.distributed.launchers.base.Launcher")
    return cls(launcher_cfg)


__all__ = ["Launcher", "from_cfg"]
