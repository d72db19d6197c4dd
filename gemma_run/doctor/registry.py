"""Every check, in the order they run, and the runner that turns each into a CheckResult.

Order: cheap facts first (versions, shims, env), then the hardware (gpus), the optional backends (quant,
deepspeed), and the smoke run last (it loads the model). Module imports stay light: each check imports torch
and friends inside itself, so `task.checks` can be validated before anything heavy loads.
"""

from __future__ import annotations

import difflib
import logging
import time
import traceback

from gemma_run.app.errors import GemmaRunError
from gemma_run.doctor import deepspeed, env, gpus, quant, shims, smoke, versions
from gemma_run.doctor.base import Check, CheckResult, DoctorContext, Finding

log = logging.getLogger(__name__)

CHECKS: list[Check] = [Check(name, fn, doc) for module in (versions, shims, env, gpus, quant, deepspeed, smoke)
                       for name, fn, doc in module.CHECKS]
FAMILIES = sorted({c.family for c in CHECKS})


def select(names: list[str]) -> tuple[list[Check], list[str]]:
    """The checks ``names`` picks (``all``, a family like ``gpus``, or a check like ``gpus.nccl``), in run
    order, and the names that match nothing."""
    wanted = set(names)
    unknown = [n for n in names if n != "all" and n not in FAMILIES and n not in {c.name for c in CHECKS}]
    if "all" in wanted:
        return list(CHECKS), unknown
    return [c for c in CHECKS if c.name in wanted or c.family in wanted], unknown


def suggest(name: str) -> str | None:
    close = difflib.get_close_matches(name, ["all", *FAMILIES, *(c.name for c in CHECKS)], n=1, cutoff=0.6)
    return close[0] if close else None


def run_check(check: Check, ctx: DoctorContext) -> CheckResult:
    """Run one check; an exception is that check's failure (a GemmaRunError keeps its fix), never the run's."""
    start = time.perf_counter()
    try:
        f = check.fn(ctx)
    except GemmaRunError as e:
        f = Finding("fail", e.problem if not e.key else f"{e.problem} (at {e.key})",
                    fix=e.fix or "see report.json", details={"error": e.format()})
    except Exception as e:  # an unexpected library error: the check fails, the others still run
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        f = Finding("fail", f"{type(e).__name__}: {first}"[:300],
                    fix="see the traceback in report.json; rerun with task.checks=[" + check.name + "]",
                    details={"traceback": traceback.format_exc()})
    seconds = round(time.perf_counter() - start, 3)
    if f.status in ("warn", "fail") and not f.fix:
        f.fix = "see the finding"
    log.info("check %s: %s (%.1f s)", check.name, f.status, seconds)
    return CheckResult(check.name, f.status, f.finding, f.fix, seconds, f.details)


def run_checks(checks: list[Check], ctx: DoctorContext) -> list[CheckResult]:
    return [run_check(c, ctx) for c in checks]
