"""Where the chunked/fused loss enters the HF Trainer: a ``compute_loss`` that never asks for full logits.

The model still runs its own forward (so peft, DeepSpeed's engine and ZeRO-3's hooks, gradient checkpointing
and the multimodal Gemma 3 wrapper all behave as usual), but with ``logits_to_keep`` naming the last position:
the lm_head projects only that one. It is given as a position tensor, not the int 1: Gemma 4 reads an int
``logits_to_keep`` as leave to run its KV-shared last layers (``num_kv_shared_layers``) on the kept positions
only, and the loss needs their hidden states at every position. A forward hook on the inner decoder keeps its
output (the final, normed hidden states); the loss kernel then takes them with the lm_head weight (the
embedding, when tied), the shifted labels and the model's ``final_logit_softcapping`` (Gemma 2 and 4 softcap
their logits; the kernels apply it, so the loss is the model's own). The one case a kernel cannot serve is a
trainable lm_head partitioned by ZeRO-3 (its gradient would have to be scattered back into the partition): there
the model's own loss is used, with a warning.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

from gemma_run.app.errors import GemmaRunError
from gemma_run.training import loss as losses

log = logging.getLogger(__name__)

DROP = ("labels", "shift_labels", "num_items_in_batch")


def causal_lm(model: Any) -> Any:
    """The transformers model under the wrappers (DeepSpeed engine, DDP, peft): the one with the lm_head."""
    while True:
        if hasattr(model, "get_base_model"):  # peft
            model = model.get_base_model()
        elif hasattr(model, "module") and not hasattr(model, "get_output_embeddings"):  # DeepSpeed / DDP
            model = model.module
        else:
            return model


def decoder(lm: Any) -> Any:
    """The module whose output is the final hidden state (Gemma3ForCausalLM.model, Gemma3Model, ...)."""
    inner = getattr(lm, lm.base_model_prefix, None) or getattr(lm, "model", None)
    if inner is None:
        raise TypeError(f"{type(lm).__name__} has no inner decoder to take hidden states from")
    return inner


def softcap(lm: Any) -> float | None:
    config = lm.config
    config = config.get_text_config() if hasattr(config, "get_text_config") else config
    return getattr(config, "final_logit_softcapping", None)


@contextlib.contextmanager
def gathered(weight: Any):
    """The whole weight for the loss's duration, when ZeRO-3 holds only this rank's partition of it."""
    if hasattr(weight, "ds_id"):
        import deepspeed

        with deepspeed.zero.GatheredParameters([weight], modifier_rank=None):
            yield
    else:
        yield


def fused_loss(model: Any, inputs: dict[str, Any], kernel: str, num_items_in_batch: Any = None,
               dtype: Any = None) -> tuple[Any, Any]:
    """(loss, model outputs) with the loss computed by ``kernel`` from the hidden states.

    ``dtype``: the mixed-precision dtype (bf16), in which the model's lm_head would run under autocast; the loss
    runs outside the autocast of the model's forward, so an fp32 hidden state or weight is cast to it here."""
    lm = causal_lm(model)
    captured: dict[str, Any] = {}

    def keep(_module: Any, _args: Any, output: Any) -> None:
        captured["hidden"] = output[0] if isinstance(output, tuple) else output.last_hidden_state

    handle = decoder(lm).register_forward_hook(keep)
    try:
        outputs = model(**{k: v for k, v in inputs.items() if k not in DROP}, logits_to_keep=last_position(inputs))
    finally:
        handle.remove()
    targets = losses.shift_labels(inputs["labels"], inputs.get("shift_labels"))
    weight = lm.get_output_embeddings().weight
    hidden = captured["hidden"]
    if tuple(hidden.shape[:-1]) != tuple(targets.shape):
        raise GemmaRunError(f"train.loss_kernel={kernel}: {type(lm).__name__}'s decoder returned hidden states of "
                            f"shape {tuple(hidden.shape)} for labels of shape {tuple(targets.shape)} (it computed "
                            "fewer positions than the loss needs)", key="train.loss_kernel",
                            fix="train.loss_kernel=none (the model's own logits and loss)")
    with gathered(weight):
        w = weight
        if dtype is not None:
            hidden, w = hidden.to(dtype), weight.to(dtype)
        loss = losses.KERNELS[kernel](hidden, w, targets, softcap=softcap(lm), num_items_in_batch=num_items_in_batch)
    return loss, outputs


def last_position(inputs: dict[str, Any]) -> Any:
    """``logits_to_keep`` as a 1D position tensor (the last position of every row); see the module's docstring."""
    import torch

    ids = inputs.get("input_ids")
    ids = ids if ids is not None else inputs["inputs_embeds"]
    return torch.tensor([ids.shape[1] - 1], device=ids.device)


def usable(model: Any) -> str | None:
    """Why the fused path cannot serve this model (None: it can)."""
    lm = causal_lm(model)
    head = lm.get_output_embeddings() if hasattr(lm, "get_output_embeddings") else None
    if head is None or not hasattr(head, "weight"):
        return f"{type(lm).__name__} has no lm_head weight"
    if hasattr(head.weight, "ds_id") and head.weight.requires_grad:
        return "the lm_head trains and ZeRO-3 partitions it"
    if getattr(head, "bias", None) is not None:
        return "the lm_head has a bias"
    import inspect

    if "logits_to_keep" not in inspect.signature(lm.forward).parameters:
        return f"{type(lm).__name__}.forward takes no logits_to_keep (it would compute every logit anyway)"
    return None


def trainer_class(kernel: str) -> type:
    """A Trainer whose training loss comes from ``kernel`` (chunked | liger); ``none``: the plain Trainer."""
    from transformers import Trainer

    if kernel == "none":
        return Trainer

    class FusedLossTrainer(Trainer):
        loss_kernel = kernel

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            if "labels" not in inputs or self.label_smoother is not None or self.compute_loss_func is not None:
                return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            # as the model's own loss does: num_items_in_batch only where the Trainer would pass it to the model
            items = num_items_in_batch if self.model_accepts_loss_kwargs else None
            import torch

            dtype = torch.bfloat16 if self.args.bf16 else torch.float16 if self.args.fp16 else None
            loss, outputs = fused_loss(model, inputs, self.loss_kernel, items, dtype)
            if self.args.average_tokens_across_devices and self.model_accepts_loss_kwargs and items is not None:
                loss = loss * (self.accelerator.num_processes if self.args.n_gpu <= 1 else self.args.n_gpu)
            return (loss, outputs) if return_outputs else loss

    return FusedLossTrainer
