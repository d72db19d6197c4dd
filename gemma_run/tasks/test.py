"""task=test: the environment doctor. Every selected check runs; the report goes to the console, report.json
and report.md; a failing check makes the run's status `failed` and the exit code 1."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from gemma_run.app.errors import ConfigError, GemmaRunError

log = logging.getLogger(__name__)

EXIT_CHECK_FAILED = 1  # distinct from 2, a config error the user must fix before anything runs


def validate(cfg: DictConfig) -> list[GemmaRunError]:
    from gemma_run.doctor.registry import FAMILIES, select, suggest

    checks = list(cfg.task.checks)
    if not checks:
        return [ConfigError("task.checks is empty", key="task.checks", fix="task.checks=[all] (the default)")]
    problems: list[GemmaRunError] = []
    for name in select(checks)[1]:
        near = suggest(name)
        hint = f"did you mean {near}? " if near else ""
        problems.append(ConfigError(f"task.checks: no check or family named {name!r}", key="task.checks",
                                    fix=f"{hint}families: all, {', '.join(FAMILIES)}; `gemma-run task=test "
                                        "task.checks=[versions]`; docs/doctor.md lists every check"))
    if cfg.task.new_tokens < 1:
        problems.append(ConfigError(f"task.new_tokens={cfg.task.new_tokens} must be >= 1", key="task.new_tokens",
                                    fix="task.new_tokens=8"))
    return problems


def run(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    from gemma_run.doctor import report
    from gemma_run.doctor.base import DoctorContext
    from gemma_run.doctor.registry import run_checks, select

    checks, _unknown = select(list(cfg.task.checks))
    ctx = DoctorContext(cfg=cfg, run_dir=Path(run_dir))
    results = run_checks(checks, ctx)
    model = cfg.task.model or cfg.model.name
    rep = report.write(results, Path(run_dir), model)
    print(report.table(results), flush=True)
    out: dict[str, Any] = {"doctor": {"status": rep["status"], "counts": rep["counts"],
                                      "failed": [r.name for r in results if r.status == "fail"]},
                           "report": "report.json"}
    if rep["status"] == "fail":
        log.error("task=test: %d check(s) failed: %s (fixes above; report.md in %s)", rep["counts"]["fail"],
                  ", ".join(out["doctor"]["failed"]), run_dir)
        out.update(status_override="failed", exit_code=EXIT_CHECK_FAILED)
    return out
