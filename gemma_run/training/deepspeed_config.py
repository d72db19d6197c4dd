"""The deepspeed group -> DeepSpeed's JSON config, rendered from our config at run time.

Batch sizes, gradient accumulation, clipping, learning rate and precision are "auto": the HF Trainer fills them
from its TrainingArguments, which are built from the same `train` keys, so the two can never disagree (the
seeds kept a hand-written ds_config.json whose batch size had to be edited in step with the command line).
"""

from __future__ import annotations

from typing import Any


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in extra.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def render(ds_cfg: Any) -> dict[str, Any] | None:
    """The DeepSpeed config dict, or None when deepspeed.stage is 0 (no DeepSpeed)."""
    stage = int(ds_cfg.stage)
    if stage == 0:
        return None
    zero: dict[str, Any] = {
        "stage": stage,
        "overlap_comm": bool(ds_cfg.overlap_comm),
        "contiguous_gradients": True,
        "reduce_bucket_size": "auto",
    }
    if ds_cfg.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": True}
    if stage == 3:
        zero.update({
            "stage3_prefetch_bucket_size": "auto",
            "stage3_param_persistence_threshold": "auto",
            # the final adapter/model is gathered into whole tensors on save (else rank 0 writes empty shards)
            "stage3_gather_16bit_weights_on_model_save": True,
        })
        if ds_cfg.offload_params:
            zero["offload_param"] = {"device": "cpu", "pin_memory": True}
    config: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": "auto",
        "gradient_accumulation_steps": "auto",
        "train_batch_size": "auto",
        "gradient_clipping": "auto",
        # precision follows the model's dtype (the trainer's bf16 flag): "auto" reads it from the trainer
        "bf16": {"enabled": "auto"},
        "fp16": {"enabled": False},
        "zero_optimization": zero,
        "steps_per_print": 1_000_000,  # the trainer logs; DeepSpeed's own step print would duplicate it
        "wall_clock_breakdown": False,
    }
    if ds_cfg.offload_optimizer:
        # an offloaded optimizer must be DeepSpeed's (CPU Adam); lr, betas, eps and decay come from the trainer
        config["optimizer"] = {"type": "AdamW", "params": {"lr": "auto", "betas": "auto", "eps": "auto",
                                                           "weight_decay": "auto"}}
    extra = ds_cfg.extra
    if hasattr(extra, "items") and not isinstance(extra, dict):
        from omegaconf import OmegaConf

        extra = OmegaConf.to_container(extra, resolve=True)
    return _merge(config, dict(extra or {}))
