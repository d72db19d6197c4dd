"""Liger's Triton kernels patched into a Gemma model's body (RoPE, RMSNorm, GeGLU) for ``train.fused_ops``.

Symptom: without it, each Gemma decoder layer runs its six RMSNorms, the rotary embedding and the MLP's tanh-GELU
as many small torch kernels, each saving its inputs for backward (gemma_run.training.fused_ops explains the
choice). With it, liger_kernel's ``apply_liger_kernel_to_gemma3_text`` / ``_gemma3`` / ``_gemma2`` /
``_gemma4_text`` rebind ``apply_rotary_pos_emb`` (not Gemma 4's) and the RMSNorm/MLP class names in transformers'
modeling module and swap the model's modules in place; ``undo`` puts those module globals back so a later model
in the same process starts unpatched.
Trigger: ``train.fused_ops`` resolves to liger (auto: CUDA, liger_kernel importable, a Gemma 2/3/4 model, no
compiled layers, no ZeRO-3), before peft.
Upstream: https://github.com/linkedin/Liger-Kernel (liger_kernel.transformers.monkey_patch).
"""

from __future__ import annotations

import importlib
import logging
from typing import Any

from gemma_run.patches.base import Patch

log = logging.getLogger(__name__)


def _base(model: Any) -> Any:
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def _needed(model: Any = None, why: str | None = None, **_) -> str | None:
    from gemma_run.training import fused_ops

    if why is not None:  # the call site resolved train.fused_ops already
        return why
    if model is None:  # no model (the doctor): whether Liger can run on this stack
        reason = fused_ops.unavailable()
        return None if reason else "liger_kernel can run here (applied when train.fused_ops resolves to liger)"
    kind, why = fused_ops.choose("auto", model)
    return why if kind == "liger" else None


def _is_applied(model: Any = None, **_) -> bool:
    return model is not None and any(m._get_name().startswith("Liger") for m in _base(model).modules())


def _apply(model: Any, why: str = "", **_) -> Any:
    """Patch ``model`` (a transformers model, before or after peft) in place; returns fused_ops.Applied."""
    from liger_kernel.transformers import monkey_patch

    from gemma_run.training import fused_ops

    base = _base(model)
    fn_name, module_name = fused_ops.SUPPORTED[fused_ops.model_type(model)]
    module = importlib.import_module(module_name)
    saved = {module_name: dict(vars(module))}
    act = getattr(base.config.get_text_config(), "hidden_activation", None) or \
        getattr(base.config.get_text_config(), "hidden_act", None)
    geglu = act == fused_ops.TANH_GELU
    rope = fused_ops.model_type(model) not in fused_ops.ROPE_KEPT
    switches = dict(rope=rope, rms_norm=True, geglu=geglu, cross_entropy=False, fused_linear_cross_entropy=False)
    if fn_name == "apply_liger_kernel_to_gemma3":
        switches["layer_norm"] = False  # the SigLIP vision tower stays as it is
    getattr(monkey_patch, fn_name)(model=base, **switches)
    if not geglu:
        why += f" (no geglu: the activation is {act}, Liger's GeGLU is the tanh approximation)"
    applied = fused_ops.Applied("liger", why, fused_ops.count_liger(base), saved)
    log.info("fused ops: liger (%s): %s", why, applied.modules)
    return applied


def _undo(applied: Any = None, **_) -> None:
    """Put back the module globals Liger replaced (``applied``: what :func:`_apply` returned)."""
    if applied is not None:
        applied.restore()


PATCH = Patch(
    name="liger_kernel.gemma",
    phase="before_peft",
    symptom="Gemma's norms, rotary embedding and GeGLU run as many unfused torch kernels while training",
    trigger="train.fused_ops resolves to liger (CUDA, liger_kernel, Gemma 2/3/4, layers not compiled, no ZeRO-3)",
    upstream="https://github.com/linkedin/Liger-Kernel",
    needed=_needed,
    apply=_apply,
    undo=_undo,
    is_applied=_is_applied,
)
