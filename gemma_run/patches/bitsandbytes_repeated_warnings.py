"""bitsandbytes' per-call warnings shown once per run instead of once per matmul.

Symptom: with quant=8bit, bitsandbytes logs "MatMul8bitLt: inputs will be cast from torch.bfloat16 to float16
during quantization" from ``bitsandbytes.autograd._functions`` on every call of every quantized Linear: one line
per layer per generated token (and per training step), burying the run's own log.
Trigger: a bitsandbytes quant option (quant=8bit|4bit|fp4) building its transformers config, before loading.
Upstream: the warning is logged by ``MatMul8bitLt.forward`` in
https://github.com/bitsandbytes-foundation/bitsandbytes/blob/main/bitsandbytes/autograd/_functions.py
(logging, not ``warnings``, so Python's once-per-location filter does not apply).

The patch adds a filter to that logger which lets each distinct message through once; nothing is imported.
"""

from __future__ import annotations

import importlib.util
import logging

from gemma_run.patches.base import Patch

LOGGER = "bitsandbytes.autograd._functions"


class _Once(logging.Filter):
    """Let each distinct message through once."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        key = str(record.msg)
        if key in self.seen:
            return False
        self.seen.add(key)
        return True


def _filters() -> list[logging.Filter]:
    return [f for f in logging.getLogger(LOGGER).filters if isinstance(f, _Once)]


def _needed(quant_backend: str | None = None, **_) -> str | None:
    if quant_backend is None:  # no run (the doctor): whether bitsandbytes could load a model here
        if importlib.util.find_spec("bitsandbytes") is None:
            return None
        return "bitsandbytes is installed (applied when a bitsandbytes quant option loads a model)"
    if quant_backend != "bitsandbytes":
        return None
    return "bitsandbytes logs its cast warning on every quantized matmul"


def _is_applied(**_) -> bool:
    return bool(_filters())


def _apply(**_) -> None:
    if not _filters():
        logging.getLogger(LOGGER).addFilter(_Once())


def _undo(**_) -> None:
    for f in _filters():
        logging.getLogger(LOGGER).removeFilter(f)


PATCH = Patch(
    name="bitsandbytes.repeated_warnings",
    phase="before_load",
    symptom="'MatMul8bitLt: inputs will be cast from ... to float16 during quantization' logged on every matmul "
            "(one line per layer per token)",
    trigger="quant=8bit|4bit|fp4 (bitsandbytes) loading a model",
    upstream="https://github.com/bitsandbytes-foundation/bitsandbytes/blob/main/bitsandbytes/autograd/_functions.py",
    needed=_needed,
    apply=_apply,
    undo=_undo,
    is_applied=_is_applied,
)
