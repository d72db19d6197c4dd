"""Import-time noise of optional libraries, kept out of every run's console (logging levels only).

Symptom: when torchao is installed, transformers imports it while loading any model, and torchao 0.18 then logs
on every run, whatever the quant mode: "Failed to load .../_C_mxfp8...so" and "..._C_cutlass_90a...so" (optional
MX/CUTLASS extensions built for another torch; quant=int4 uses torch's own int4 kernels), "Detected no triton" on
CPU machines, and torch >= 2.13's deprecation of its enum registration with pytree (twice). None is actionable by
a user; `gemma-run task=test` checks what int4 really needs (the `quant.torchao` check).
Trigger: every run (the loggers are set whether or not torchao is installed; setting a level imports nothing).
Upstream: torchao logs these at import (https://github.com/pytorch/ao; no upstream issue tracked yet).
"""

from __future__ import annotations

import logging

from gemma_run.patches.base import Patch

QUIET = ("torchao", "torchao.kernel.intmm", "torch.utils._pytree")
_saved: dict[str, int] = {}  # logger -> its level before the patch


def _needed(**_) -> str | None:
    return "optional libraries log import-time noise (torchao, torch.utils._pytree)"


def _is_applied(**_) -> bool:
    return bool(_saved) and all(logging.getLogger(n).level == logging.ERROR for n in QUIET)


def _apply(**_) -> None:
    for name in QUIET:
        logger = logging.getLogger(name)
        _saved.setdefault(name, logger.level)
        logger.setLevel(logging.ERROR)


def _undo(**_) -> None:
    for name, level in _saved.items():
        logging.getLogger(name).setLevel(level)
    _saved.clear()


PATCH = Patch(
    name="logging.quiet_optional_imports",
    phase="process_start",
    symptom="torchao's 'Failed to load ..._C_mxfp8...so' / 'Detected no triton' and torch's pytree deprecation "
            "logged on every run",
    trigger="every run (torchao installed: transformers imports it while loading any model)",
    upstream="https://github.com/pytorch/ao (no upstream issue tracked yet)",
    needed=_needed,
    apply=_apply,
    undo=_undo,
    is_applied=_is_applied,
)
