"""One module per task. The ``task`` group's ``_target_`` (conf/task/<name>.yaml) names its entry point,
``run(cfg, run_dir)``; the same module may add ``validate(cfg)`` (config problems) and, for a task that launches
processes, ``run_rank(cfg, run_dir, resume_from, main)`` (what every launched rank runs)."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from types import ModuleType
from typing import Any


def module_of(task_cfg: Any) -> ModuleType:
    """The module of the task's ``_target_`` (ImportError when it does not import)."""
    return importlib.import_module(str(task_cfg._target_).rpartition(".")[0])


def rank_entry(task_cfg: Any) -> Callable[..., dict[str, Any]]:
    """The task's ``run_rank``: what a rank started by the launcher runs."""
    from gemma_run.app.errors import ConfigError

    fn = getattr(module_of(task_cfg), "run_rank", None)
    if fn is None:
        raise ConfigError(f"task={task_cfg.name} ({task_cfg._target_}) runs in one process: its module has no "
                          "run_rank for launched ranks", key="launcher", fix="launcher=local")
    return fn
