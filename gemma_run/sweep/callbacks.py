"""Hydra callbacks (configured under hydra.callbacks in gemma_run/conf/config.yaml)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf


def _rewrite(path: Path) -> None:
    if path.is_file():
        from gemma_run.app.redact import redact_config

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
        if config.hydra.mode == RunMode.MULTIRUN:  # the launcher wrote it after on_multirun_start
            _rewrite(Path(config.hydra.sweep.dir) / "multirun.yaml")

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        _rewrite(Path(config.hydra.sweep.dir) / "multirun.yaml")


class LockRunDir(Callback):
    """Before Hydra creates the run dir and writes its config there: a fresh default dir is claimed (a second run
    started in the same second gets TIME_2, never the first one's dir), and the run dir is locked for this process,
    so a second live run in it is refused, naming the first, before it writes anything (gemma_run/app/run_lock.py)."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        import sys

        from omegaconf import read_write

        from gemma_run.app import resolvers, run_lock
        from gemma_run.app.errors import GemmaRunError

        run_dir = str(config.hydra.run.dir)
        if run_dir in resolvers.FRESH:
            try:
                run_dir = str(run_lock.claim(run_dir))
            except OSError:
                return  # a place that cannot be written: the run dir check reports it
            with read_write(config.hydra.run):
                config.hydra.run.dir = run_dir
        try:
            run_lock.acquire(run_dir)  # held until this process exits
        except GemmaRunError as e:  # Hydra turns a callback's exception into a warning: exit here instead
            print(e.format(), file=sys.stderr)
            sys.exit(e.exit_code)


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
