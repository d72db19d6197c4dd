"""gemma-run's decode-step attention registered in transformers' attention and mask registries.

Symptom: without the registration, ``generation.step_attention=decode`` (or auto with a compiled step) has no
implementation named ``gemma_run_decode``: transformers raises on the unknown attention implementation, and the
compiled decode step would otherwise dispatch ``sdpa`` to a kernel made for long queries.
Trigger: the fast engine with the decode attention (gemma_run.infer.generate, at generate time).
Upstream: transformers' ``AttentionInterface`` / ``AttentionMaskInterface``
(https://huggingface.co/docs/transformers/attention_interface). The attention itself is
gemma_run.infer.engine.decode_attention.
"""

from __future__ import annotations

from gemma_run.patches.base import Patch

NAME = "gemma_run_decode"


def _interfaces():
    from transformers.masking_utils import AttentionMaskInterface
    from transformers.modeling_utils import AttentionInterface

    return AttentionInterface, AttentionMaskInterface


def _needed(**_) -> str | None:
    return f"the decode step's attention {NAME!r} is not one transformers knows until registered"


def _is_applied(**_) -> bool:
    return all(NAME in i._global_mapping for i in _interfaces())


def _apply(**_) -> str:
    from gemma_run.infer.engine import decode_attention

    return decode_attention.register()


def _undo(**_) -> None:
    for interface in _interfaces():
        interface._global_mapping.pop(NAME, None)


PATCH = Patch(
    name="transformers.attention.gemma_run_decode",
    phase="generate",
    symptom=f"attention implementation {NAME!r} unknown to transformers: the fast engine's decode step cannot "
            "use the decode attention",
    trigger="generation.engine=fast with generation.step_attention=decode (auto: where the step is compiled)",
    upstream="https://huggingface.co/docs/transformers/attention_interface",
    needed=_needed,
    apply=_apply,
    undo=_undo,
    is_applied=_is_applied,
)
