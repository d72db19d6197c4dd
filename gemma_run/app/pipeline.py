"""The plugin pipeline: build the configured plugins, run them in order, record the outcome."""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from gemma_run.app.context import RunContext
from gemma_run.app.errors import GemmaRunError
from gemma_run.app.plugins import build_pipeline
from gemma_run.app.run_lock import owns_run_dir
from gemma_run.app.validation import prepare

log = logging.getLogger("gemma_run")


@owns_run_dir  # one live run per run dir: a second one is refused, naming this one
def run(cfg: DictConfig, run_dir: str | Path) -> dict[str, Any]:
    """Run the pipeline on a composed config; write result.json into ``run_dir`` and return the result.

    Raises :class:`GemmaRunError` for problems the user can fix (after recording them in result.json).
    """
    from gemma_run.app.writable import check as check_writable
    from gemma_run.patches import registry

    registry.apply_one("logging.quiet_optional_imports")  # before anything imports torchao
    run_dir = Path(run_dir)
    check_writable(run_dir, resume=cfg.get("resume"))  # a read-only path: one message naming hydra.run.dir
    ctx = RunContext(cfg=cfg, run_dir=run_dir)
    previous_result = (run_dir / "result.json").is_file()
    ctx.result.update(task=cfg.task.name, model=None, quant=cfg.quant.name, status="running")
    start = time.perf_counter()
    try:
        ctx.result.update(prepare(cfg))  # mandatory values set; a model.path's config.json and name are the model's
        for name, _order, plugin in build_pipeline(cfg.plugins):
            log.debug("plugin %s", name)
            plugin(ctx)
    except Exception as e:  # recorded, then re-raised: a user error prints cleanly, a bug with its traceback
        error = e.format() if isinstance(e, GemmaRunError) else f"{type(e).__name__}: {e}"
        ctx.result.update(status="failed", error=error, seconds=round(time.perf_counter() - start, 3))
        if ctx.is_main_process:
            # a failed attempt to continue a run never overwrites that run's record
            name = "result.failed.json" if previous_result else "result.json"
            try:
                ctx.write_json(name, ctx.result)
            except OSError as w:  # a full disk: the error itself is what the user must see
                log.warning("could not record the failure in %s: %s", run_dir / name, w.strerror or w)
        raise
    ctx.result["status"] = ctx.result.get("status_override", "ok")
    ctx.result.pop("status_override", None)
    ctx.result["seconds"] = round(time.perf_counter() - start, 3)
    if ctx.is_main_process:
        ctx.write_json("result.json", ctx.result)
    return ctx.result


def hydra_job(cfg: DictConfig) -> dict[str, Any] | None:
    """The body of the Hydra app: run in Hydra's output dir; a user error is one message, not a traceback.

    In a sweep a failed job is recorded (result.json, its log) and the sweep goes on; the summary at the end
    lists it with its error and makes the exit code non-zero (gemma_run.sweep.callbacks.SweepSummary).
    """
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    hc = HydraConfig.get()
    multirun = hc.mode == RunMode.MULTIRUN
    try:
        result = run(cfg, hc.runtime.output_dir)
    except GemmaRunError as e:
        log.error("%s", e.format())
        if multirun:
            return None
        sys.exit(e.exit_code)
    except Exception:
        if not multirun:
            raise
        log.exception("job %s failed", hc.job.num)
        return None
    # A task that ran to the end but found failures (task=test: a failing check) asks for a non-zero exit with
    # `exit_code` in its result (its status is already "failed" in result.json, which is what a sweep reads).
    if result.get("exit_code") and not multirun:
        sys.exit(int(result["exit_code"]))
    return result


def objective_value(cfg: DictConfig, result: dict[str, Any] | None) -> float | None:
    """What an optimising sweeper (Optuna) reads from a job: result[objective]; NaN for a failed job."""
    if cfg.objective is None:
        return None
    if result is None:
        return float("nan")
    value = result.get(cfg.objective)
    if not isinstance(value, int | float) or isinstance(value, bool):
        numeric = sorted(k for k, v in result.items() if isinstance(v, int | float) and not isinstance(v, bool))
        raise GemmaRunError(f"objective={cfg.objective!r} is not a number in this task's result.json",
                            key="objective", fix=f"one of: {', '.join(numeric)}")
    return float(value)
