"""task=merge: a LoRA adapter (task.adapter) merged into the base model of the `model` group."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from gemma_run.app.errors import ConfigError, GemmaRunError


def validate(cfg: DictConfig) -> list[GemmaRunError]:
    if not cfg.task.adapter:
        return [ConfigError("task=merge needs task.adapter", key="task.adapter",
                            fix="task.adapter=outputs/DATE/TIME (a task=train run dir) or an adapter dir")]
    return []


def run(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    from gemma_run.training import merge

    adapter = merge.adapter_dir(cfg.task.adapter, "task.adapter")
    out = Path(cfg.task.output_dir).expanduser() if cfg.task.output_dir else Path(run_dir) / "merged"
    return merge.merge(cfg, adapter, out)
