"""Hydra callbacks (configured under hydra.callbacks in conf/config.yaml)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

_ASSIGNMENT = re.compile(r"([A-Za-z0-9_]+)=([^,]*)")  # NAME=value inside overrides and override_dirname


def _redact_text(text: str) -> str:
    from gemma_run.env import REDACTED, is_secret

    return _ASSIGNMENT.sub(lambda m: f"{m[1]}={REDACTED}" if is_secret(m[1]) else m[0], text)


def redact_config(node: Any) -> Any:
    """A copy of a config with secret-looking env values replaced by [REDACTED], also inside override strings
    (`+env.vars.HF_TOKEN=abc` in overrides.yaml and hydra.job.override_dirname)."""
    from gemma_run.env import REDACTED, is_secret

    if isinstance(node, str):
        return _redact_text(node)
    if isinstance(node, list):
        return [redact_config(item) for item in node]
    if isinstance(node, dict):
        out = {}
        for key, value in node.items():
            if key == "vars" and isinstance(value, dict):
                out[key] = {k: (REDACTED if is_secret(k) else v) for k, v in value.items()}
            else:
                out[key] = redact_config(value)
        return out
    return node


def _rewrite(path: Path) -> None:
    if path.is_file():
        data = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
        path.write_text(OmegaConf.to_yaml(OmegaConf.create(redact_config(data))))


class RedactSecrets(Callback):
    """Hydra saves .hydra/*.yaml before the job starts; rewrite them with secret values redacted."""

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        subdir = config.hydra.output_subdir
        if subdir is None:
            return
        saved = Path(config.hydra.runtime.output_dir) / subdir
        for name in ("config.yaml", "hydra.yaml", "overrides.yaml"):
            _rewrite(saved / name)

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        pass

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        _rewrite(Path(config.hydra.sweep.dir) / "multirun.yaml")
