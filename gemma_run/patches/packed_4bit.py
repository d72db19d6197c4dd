"""Module surgery on a loaded quant=4bit model: its NF4 linears multiplied by gemma-run's 4-bit kernel for decoding.

Symptom: a batch-1 decode step multiplies NF4 weights with bitsandbytes' matrix-vector product, which reads them
at a fraction of the GPU's bandwidth; this surgery puts gemma-run's kernel in its place. It is opt-in: the kernel
measures slower than bitsandbytes' product so far (docs/benchmarks.md, "4-bit kernels").
Trigger: ``generation.engine=fast`` on a model with bitsandbytes NF4 linears and ``generation.kernel_4bit=gemv4``, at
generate time; undone (the bitsandbytes modules back, their bytes as loaded)
before the model trains or is saved. gemma_run.infer.engine.packed_4bit has the modules.
Upstream: bitsandbytes' 4-bit inference kernel (``gemv_4bit``), https://github.com/bitsandbytes-foundation/bitsandbytes
"""

from __future__ import annotations

from typing import Any

from gemma_run.patches.base import Patch


def _needed(model: Any = None, **_) -> str | None:
    if model is None:
        return None
    from gemma_run.infer.engine.packed_4bit import MARK, packable

    if not (MARK in model.__dict__ or any(packable(m) for m in model.modules())):
        return None
    return "the fast engine multiplies NF4 weights with gemma-run's 4-bit kernel"


def _is_applied(model: Any = None, **_) -> bool:
    from gemma_run.infer.engine.packed_4bit import MARK

    return model is not None and MARK in model.__dict__


def _apply(model: Any, **_) -> int:
    from gemma_run.infer.engine import packed_4bit

    return packed_4bit.pack(model)


def _undo(model: Any, **_) -> None:
    from gemma_run.infer.engine import Decoder

    Decoder.of(model).restore()


PATCH = Patch(
    name="model.packed_4bit",
    phase="generate",
    symptom="a 4-bit decode step reads its NF4 weights at a fraction of the bandwidth (bitsandbytes' product)",
    trigger="generation.engine=fast on quant=4bit (NF4) with generation.kernel_4bit=gemv4",
    upstream="https://github.com/bitsandbytes-foundation/bitsandbytes",
    needed=_needed,
    apply=_apply,
    undo=_undo,
    is_applied=_is_applied,
)
