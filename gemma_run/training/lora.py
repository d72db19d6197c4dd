"""The lora group -> a peft adapter on the loaded model (QLoRA when the model was loaded in 4 bits)."""

from __future__ import annotations

import logging
from typing import Any

from gemma_run.app.errors import GemmaRunError

log = logging.getLogger(__name__)


def peft_config(lora_cfg: Any):  # -> peft.LoraConfig
    from peft import LoraConfig, TaskType

    targets = list(lora_cfg.target_modules)
    parameters = list(lora_cfg.get("target_parameters") or [])
    return LoraConfig(
        r=lora_cfg.r,
        lora_alpha=lora_cfg.alpha,
        lora_dropout=lora_cfg.dropout,
        target_modules="all-linear" if targets == ["all-linear"] else targets,
        target_parameters=parameters or None,
        bias=lora_cfg.bias,
        task_type=TaskType.CAUSAL_LM,
    )


def linear_names(model: Any) -> list[str]:
    """The distinct names (last part of the path) of the model's linear layers an adapter can go on: every
    Linear (a 4-bit one included) and GPT-2's Conv1D, the output head aside."""
    import torch
    from transformers.pytorch_utils import Conv1D

    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    return sorted({name.rsplit(".", 1)[-1] for name, m in model.named_modules()
                   if isinstance(m, torch.nn.Linear | Conv1D) and m is not head})


def _matches(target: str, names: list[str]) -> bool:
    """Whether peft's suffix rule takes ``target`` (a module name, or a dotted tail of a path) for one of these."""
    return any(path == target or path.endswith("." + target) for path in names)


def check_targets(model: Any, lora_cfg: Any) -> None:
    """``lora.target_modules`` against the model: none matching is an error naming the model's linear layers
    (peft's own says only which targets were not found); some not matching is a warning, as a layer kind a
    model lacks (Gemma 4's global layers have no v_proj) is harmless."""
    targets = list(lora_cfg.target_modules)
    if targets == ["all-linear"] or not targets:
        return
    paths = [name for name, _ in model.named_modules()]
    missing = [t for t in targets if not _matches(t, paths)]
    if not missing:
        return
    linear = linear_names(model)
    if len(missing) == len(targets) and not list(lora_cfg.get("target_parameters") or []):
        raise GemmaRunError(f"lora.target_modules={targets} match no layer of this model; its linear layers are: "
                            f"{', '.join(linear)}", key="lora.target_modules",
                            fix=f"lora.target_modules=[{','.join(linear)}] (or a subset), or [all-linear]")
    log.warning("lora.target_modules: %s match no layer of this model (its linear layers: %s)", missing,
                ", ".join(linear))


def _embeddings(model: Any) -> list[Any]:
    found = [model.get_input_embeddings(), model.get_output_embeddings()]
    return [e for e in found if e is not None and getattr(e, "weight", None) is not None]


def _restore_embeddings(model: Any, before: dict[int, Any]) -> None:
    """Cast the frozen embedding / lm_head back to the dtype they loaded in (bf16).

    peft's k-bit preparation upcasts every weight bitsandbytes did not quantize to fp32, the 262k x hidden
    embedding included: 2.7 GB more at 4B and 5.6 GB at 27B, and an fp32 residual stream. Frozen, they gain
    nothing from fp32 (bf16 values are exact in either). ``lora.fp32_embeddings=true`` keeps peft's upcast."""
    import torch

    for e in _embeddings(model):
        w, dtype = e.weight, before.get(id(e.weight))
        if dtype in (torch.bfloat16, torch.float16) and w.dtype == torch.float32 and not w.requires_grad:
            w.data = w.data.to(dtype)
            log.info("QLoRA: %s kept in %s (frozen; lora.fp32_embeddings=true upcasts it as peft does)",
                     type(e).__name__, dtype)


def apply(model: Any, lora_cfg: Any, *, quantized: bool, sharded: bool, gradient_checkpointing: bool,
          autocast: bool = False) -> Any:
    """Wrap ``model`` with trainable adapters (or leave it whole when LoRA is off); returns the model to train.

    A k-bit model is first prepared the usual QLoRA way (norms in fp32, input grads on). Under ZeRO-3 the weights
    are partitioned placeholders that this preparation would touch, so there only the input grads are enabled,
    as TRL does for sharded QLoRA. ``autocast``: the model trains under torch's bf16/fp16 autocast (the
    Trainer's mixed precision without DeepSpeed), so the adapters' input casts are skipped
    (the patch ``peft.cast_input_dtype``, gemma_run.patches.peft_input_casts).
    """
    from peft import get_peft_model, prepare_model_for_kbit_training

    if quantized and not sharded:
        before = {id(e.weight): e.weight.dtype for e in _embeddings(model)}
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=gradient_checkpointing,
                                                gradient_checkpointing_kwargs={"use_reentrant": False})
        if not lora_cfg.fp32_embeddings:
            _restore_embeddings(model, before)
    elif gradient_checkpointing:
        model.enable_input_require_grads()
    if not lora_cfg.enabled:
        return model
    check_targets(model, lora_cfg)
    model = get_peft_model(model, peft_config(lora_cfg))
    from gemma_run.patches import registry

    registry.apply_one("peft.cast_input_dtype", model=model, autocast=autocast)
    trainable, total = model.get_nb_trainable_parameters()
    log.info("lora: %d trainable of %d parameters (%.3f%%), r=%d alpha=%d", trainable, total,
             100 * trainable / max(total, 1), lora_cfg.r, lora_cfg.alpha)
    return model
