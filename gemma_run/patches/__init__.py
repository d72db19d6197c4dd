"""Patches to other libraries, one module each, applied by :mod:`gemma_run.patches.registry` phase by phase.

Importing this package applies nothing and imports nothing heavy.
"""

from gemma_run.patches.base import PHASES, Patch, PatchReport
from gemma_run.patches.registry import APPLIED, PATCHES, apply, apply_all, apply_one, get, report, undo

__all__ = ["APPLIED", "PATCHES", "PHASES", "Patch", "PatchReport", "apply", "apply_all", "apply_one", "get",
           "report", "undo"]
