"""Every patch gemma-run makes to another library, in one ordered list, applied phase by phase (never at import).

``apply(phase, **context)`` applies the patches of that phase whose trigger holds; ``apply_one(name, **context)``
applies one where its call site needs what it returns; each application is logged and recorded in
:data:`APPLIED` (the run's result carries it). ``report(**context)`` lists every patch with its state, for the
doctor (``task=test``).
"""

from __future__ import annotations

import logging
from typing import Any

from gemma_run.patches import (
    bitsandbytes_repeated_warnings,
    decode_attention,
    dynamo_recompile_limit,
    fused_projections,
    get_default_device,
    liger_gemma,
    packed_4bit,
    peft_input_casts,
    quiet_optional_imports,
)
from gemma_run.patches.base import PHASES, Patch, PatchReport

log = logging.getLogger(__name__)

# In phase order; within a phase, in the order they are applied.
PATCHES: list[Patch] = [
    quiet_optional_imports.PATCH,
    get_default_device.PATCH,
    bitsandbytes_repeated_warnings.PATCH,
    liger_gemma.PATCH,
    peft_input_casts.PATCH,
    dynamo_recompile_limit.PATCH,
    decode_attention.PATCH,
    packed_4bit.PATCH,
    fused_projections.PATCH,
]
APPLIED: dict[str, str] = {}  # name -> why, for every patch this process applied (until undone)


def get(name: str) -> Patch:
    for patch in PATCHES:
        if patch.name == name:
            return patch
    raise KeyError(f"no patch named {name!r} (known: {', '.join(p.name for p in PATCHES)})")


def _apply(patch: Patch, context: dict[str, Any]) -> PatchReport:
    if patch.is_applied(**context):
        return PatchReport(patch.name, patch.phase, "already applied", "", patch.symptom, patch.upstream)
    reason = patch.needed(**context)
    if reason is None:
        return PatchReport(patch.name, patch.phase, "not needed", "", patch.symptom, patch.upstream)
    value = patch.apply(**context)
    APPLIED[patch.name] = reason
    log.info("patch %s applied: %s (upstream: %s)", patch.name, reason, patch.upstream)
    return PatchReport(patch.name, patch.phase, "applied", reason, patch.symptom, patch.upstream, value)


def apply(phase: str, patches: list[Patch] | None = None, **context: Any) -> list[PatchReport]:
    """Apply every patch of ``phase`` whose trigger holds in ``context``; each safe to apply twice."""
    if phase not in PHASES:
        raise ValueError(f"unknown patch phase {phase!r} (phases: {', '.join(PHASES)})")
    return [_apply(p, context) for p in (PATCHES if patches is None else patches) if p.phase == phase]


def apply_one(name: str, **context: Any) -> PatchReport:
    """Apply the patch ``name`` if its trigger holds; the report's ``value`` is what the patch returned."""
    return _apply(get(name), context)


def undo(name: str, **context: Any) -> None:
    """Put back what the patch ``name`` changed."""
    get(name).undo(**context)
    APPLIED.pop(name, None)


def apply_all(patches: list[Patch] | None = None) -> list[PatchReport]:
    """The process-start patches (the ``shims`` plugin's step)."""
    return apply("process_start", patches)


def report(**context: Any) -> list[dict[str, Any]]:
    """Every registered patch: name, phase, whether its trigger holds here, whether it is applied, and why."""
    rows = []
    for patch in PATCHES:
        applied = patch.is_applied(**context) or patch.name in APPLIED
        try:
            reason = patch.needed(**context)
        except Exception as e:  # a trigger that cannot be evaluated here (a library missing) is reported as such
            reason, holds = f"cannot tell here: {type(e).__name__}: {e}", None
        else:
            holds = reason is not None
        rows.append({"name": patch.name, "phase": patch.phase, "trigger_holds": holds, "applied": applied,
                     "why": reason or APPLIED.get(patch.name, ""), "trigger": patch.trigger,
                     "without_it": patch.symptom, "upstream": patch.upstream})
    return rows
