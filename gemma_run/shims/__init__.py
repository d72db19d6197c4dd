"""The registry of compatibility shims, applied by the ``shims`` plugin in this order (never at import)."""

from __future__ import annotations

import logging

from gemma_run.shims import get_default_device
from gemma_run.shims.base import Shim, ShimReport

log = logging.getLogger(__name__)

SHIMS: list[Shim] = [
    get_default_device.SHIM,
]


def apply_all(shims: list[Shim] | None = None) -> list[ShimReport]:
    """Apply every shim this stack needs; each logged, each safe to apply twice."""
    reports = []
    for shim in SHIMS if shims is None else shims:
        if shim.is_applied():
            reports.append(ShimReport(shim.name, "already applied", "", shim.symptom, shim.upstream))
            continue
        reason = shim.needed()
        if reason is None:
            reports.append(ShimReport(shim.name, "not needed", "", shim.symptom, shim.upstream))
            continue
        shim.apply()
        log.info("shim %s applied: %s (upstream: %s)", shim.name, reason, shim.upstream)
        reports.append(ShimReport(shim.name, "applied", reason, shim.symptom, shim.upstream))
    return reports
