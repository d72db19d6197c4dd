"""Import-time noise of optional libraries, kept out of every run's console (logging levels only).

Symptom: when torchao is installed, transformers imports it while loading any model, and torchao 0.18 then logs
on every run, whatever the quant mode: "Failed to load .../_C_mxfp8...so" and "..._C_cutlass_90a...so" (optional
MX/CUTLASS extensions built for another torch; quant=int4 uses torch's own int4 kernels), "Detected no triton" on
CPU machines, and torch >= 2.13's deprecation of its enum registration with pytree (twice). On a machine without
a GPU, DeepSpeed's accelerator detection (run when accelerate imports it, e.g. as transformers saves the random
model it builds) prints "Setting accelerator to CPU. If you have GPU or other accelerator, we were unable to
detect it." on stdout, ahead of the run's own output (the table of task=bench). None is actionable by a user;
`gemma-run task=test` checks what int4 and DeepSpeed really need.
Trigger: every run (the loggers are set whether or not torchao or DeepSpeed is installed; setting a level or a
filter imports nothing). DeepSpeed sets its logger's level when it is imported, so that message is dropped by a
filter on the logger, which stays.
Upstream: torchao logs these at import (https://github.com/pytorch/ao; no upstream issue tracked yet); DeepSpeed's
message: deepspeed/accelerator/real_accelerator.py (https://github.com/deepspeedai/DeepSpeed).
"""

from __future__ import annotations

import logging

from gemma_run.patches.base import Patch

QUIET = ("torchao", "torchao.kernel.intmm", "torch.utils._pytree")
DEEPSPEED = "DeepSpeed"  # deepspeed.utils.logging's logger
_saved: dict[str, int] = {}  # logger -> its level before the patch


class _NoCpuFallbackNotice(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Setting accelerator to CPU")


_FILTER = _NoCpuFallbackNotice()


def _needed(**_) -> str | None:
    return "optional libraries log import-time noise (torchao, torch.utils._pytree, DeepSpeed on a CPU)"


def _is_applied(**_) -> bool:
    return (bool(_saved) and all(logging.getLogger(n).level == logging.ERROR for n in QUIET)
            and _FILTER in logging.getLogger(DEEPSPEED).filters)


def _apply(**_) -> None:
    for name in QUIET:
        logger = logging.getLogger(name)
        _saved.setdefault(name, logger.level)
        logger.setLevel(logging.ERROR)
    logging.getLogger(DEEPSPEED).addFilter(_FILTER)  # adds it once


def _undo(**_) -> None:
    for name, level in _saved.items():
        logging.getLogger(name).setLevel(level)
    _saved.clear()
    logging.getLogger(DEEPSPEED).removeFilter(_FILTER)


PATCH = Patch(
    name="logging.quiet_optional_imports",
    phase="process_start",
    symptom="torchao's 'Failed to load ..._C_mxfp8...so' / 'Detected no triton' and torch's pytree deprecation "
            "logged on every run; DeepSpeed's 'Setting accelerator to CPU' on stdout on a machine without a GPU",
    trigger="every run (torchao installed: transformers imports it while loading any model; DeepSpeed "
            "installed: accelerate imports it when a model is saved or unwrapped)",
    upstream="https://github.com/pytorch/ao (no upstream issue tracked yet)",
    needed=_needed,
    apply=_apply,
    undo=_undo,
    is_applied=_is_applied,
)
