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
    from gemma_run.app.components import component

    return component("launcher", launcher_cfg, Launcher, DEFAULT_TARGET)


__all__ = ["Launcher", "from_cfg"]
