"""peft's cast of each LoRA layer's input to the adapter's dtype, turned off under the Trainer's autocast.

Symptom: peft keeps the adapters in fp32 and casts every LoRA layer's input to that dtype before the dropout (its
bitsandbytes layers, QLoRA's, already skip the cast under autocast). Under the Trainer's bf16 autocast this
doubles work for nothing:
- the bf16 activation is copied to fp32;
- the dropout runs on fp32;
- autocast casts the result back to bf16 for the adapter's matrix product.
These copies and the fp32 dropout are a sizeable share of a LoRA step's device time (``task=bench_train
task.profile=true``, docs/train.md). Under autocast the product runs in bf16 either way, so without dropout the
numbers are the same to the bit; with dropout its masks are drawn on bf16 instead of fp32 (other random numbers,
the same distribution; a bf16 dropout rounds the scaled value once, as the cast back did).
Trigger: LoRA trained under torch's bf16/fp16 autocast (the Trainer's mixed precision without DeepSpeed). Without
it (fp32 training; DeepSpeed's bf16, which casts the adapters to bf16 itself) peft's cast is what makes the dtypes
meet, and the patch is not applied.
Upstream: peft's ``BaseTunerLayer.cast_input_dtype_enabled`` (https://github.com/huggingface/peft/blob/main/src/peft/tuners/tuners_utils.py).
Applied by gemma_run.training.lora after ``get_peft_model``.
"""

from __future__ import annotations

from typing import Any

from gemma_run.patches.base import Patch


def _layers(model: Any) -> list[Any]:
    from peft.tuners.tuners_utils import BaseTunerLayer

    return [m for m in model.modules() if isinstance(m, BaseTunerLayer) and hasattr(m, "cast_input_dtype_enabled")]


def _needed(model: Any = None, autocast: bool = False, **_) -> str | None:
    if model is None or not autocast:
        return None
    if not _layers(model):
        return None
    return "LoRA under torch autocast: peft's fp32 input casts and fp32 dropout are work autocast undoes"


def _is_applied(model: Any = None, **_) -> bool:
    layers = _layers(model) if model is not None else []
    return bool(layers) and not any(m.cast_input_dtype_enabled for m in layers)


def _apply(model: Any, **_) -> int:
    """Turn the casts off; returns how many layers."""
    layers = _layers(model)
    for m in layers:
        m.cast_input_dtype_enabled = False
    return len(layers)


def _undo(model: Any, **_) -> None:
    for m in _layers(model):
        m.cast_input_dtype_enabled = True  # peft's default


PATCH = Patch(
    name="peft.cast_input_dtype",
    phase="after_peft",
    symptom="LoRA steps under bf16 autocast copy every adapter input to fp32 and run dropout in fp32, for nothing",
    trigger="LoRA with the Trainer's bf16/fp16 autocast (no DeepSpeed)",
    upstream="https://github.com/huggingface/peft/blob/main/src/peft/tuners/tuners_utils.py",
    needed=_needed,
    apply=_apply,
    undo=_undo,
    is_applied=_is_applied,
)
