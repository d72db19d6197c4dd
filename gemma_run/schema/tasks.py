"""Schemas of the ``task`` group: which task runs (``_target_``) and its own options."""

from __future__ import annotations

from dataclasses import dataclass

from omegaconf import MISSING


@dataclass
class TaskConfig:
    name: str = MISSING
    # The task's entry point, called as fn(cfg, run_dir) -> dict (the task's result).
    _target_: str = MISSING


@dataclass
class InferTaskConfig(TaskConfig):
    name: str = "infer"
    _target_: str = "gemma_run.tasks.infer.run"
