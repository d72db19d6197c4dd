"""Hydra callbacks (configured under hydra.callbacks in conf/config.yaml)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

# env.vars.NAME=value inside override strings (overrides.yaml, hydra.job.override_dirname)
_ASSIGNMENT = re.compile(r"(env\.vars\.)([A-Za-z0-9_]+)=([^,]*)")


def _redact_text(text: str) -> str:
    from gemma_run.env import REDACTED, is_secret

    return _ASSIGNMENT.sub(lambda m: f"{m[1]}{m[2]}={REDACTED}" if is_secret(m[2]) else m[0], text)


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

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        _rewrite(Path(config.hydra.sweep.dir) / "multirun.yaml")


class SweepSummary(Callback):
    """At the end of a sweep: summary.md, summary.csv and summary.png in the multirun dir.

    ``metrics``: result.json keys to tabulate (default: the common ones present); ``plot_metric``: the one to
    plot (default: the first numeric one). Set them with hydra.callbacks.summary.plot_metric=tokens_per_second.
    The exit code is non-zero when any job failed; the other jobs' results are kept.
    """

    def __init__(self, metrics: list[str] | None = None, plot_metric: str | None = None) -> None:
        self.metrics = list(metrics) if metrics else None
        self.plot_metric = plot_metric

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        import logging
        import sys

        from hydra.core.override_parser.overrides_parser import OverridesParser

        from gemma_run.sweep import summary

        sweep_dir = Path(config.hydra.sweep.dir)
        if not sweep_dir.is_dir():
            return
        parsed = OverridesParser.create().parse_overrides(list(config.hydra.overrides.task))
        swept = [o.get_key_element().lstrip("+~") for o in parsed if o.is_sweep_override()]
        swept += [str(k) for k in (OmegaConf.select(config, "hydra.sweeper.params") or {})]  # Optuna's search space
        rows = summary.collect(sweep_dir, swept or None)
        written = summary.write(sweep_dir, rows, self.metrics or list(summary.DEFAULT_METRICS), self.plot_metric)
        failed = [r for r in rows if r.status != "ok"]
        log = logging.getLogger("gemma_run")
        log.info("sweep summary: %s", ", ".join(str(p) for p in written.values()))
        print((sweep_dir / "summary.md").read_text())
        if failed:
            log.error("%d of %d jobs failed: %s", len(failed), len(rows),
                      "; ".join(f"job {r.num}: {r.error}" for r in failed))
            sys.exit(1)
