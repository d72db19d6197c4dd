"""``train.attn_implementation=auto``: sdpa where it computes what eager computes, eager where it cannot.

sdpa has no attention-logit softcapping: Gemma 2 softcaps (``attn_logit_softcapping``, 50.0 by default) and
transformers refuses sdpa for it (``_supports_sdpa = False``), so it trains with eager. Gemma 3 dropped the
softcapping (``attn_logit_softcapping=None``) for QK-norm: sdpa gives the same attention, faster and without the
[heads, seq, seq] fp32 scores of eager. Packed rows stay apart under sdpa: with no attention_mask and no cache,
transformers reads the restarts of ``position_ids`` (masking_utils.find_packed_sequence_indices) and builds a
block-causal mask (tests/test_train_fast.py checks it against the sequences run one by one).

FlashAttention-2 takes head dims up to 256. Gemma 4's global layers have a head of 512 (``global_head_dim``):
``flash_attention_2`` asked (by ``train.attn_implementation`` or ``model.attn_implementation``) for a model whose
largest head exceeds that is replaced by sdpa, which takes any head dim and computes what eager does
(tests/test_gemma4_train.py), with a warning naming why.
"""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger(__name__)


def attn_softcap(model_cfg: Any) -> float | None:
    """The architecture's attention softcapping, defaults included (the config of model.config, no weights)."""
    from omegaconf import OmegaConf

    from gemma_run.loading.random_weights import architecture_config

    config = OmegaConf.to_container(model_cfg.config, resolve=True)
    arch = architecture_config(config, True)
    return getattr(arch, "attn_logit_softcapping", None)


# FlashAttention's kernels and the largest head dim each takes
FLASH_HEAD_DIM = {"flash_attention_2": 256, "flash_attention_3": 256}


def head_dims(arch: Any) -> list[int]:
    """Every layer's head dim: Gemma 4 gives its global layers their own (``per_layer_config``), and then refuses
    to answer ``config.head_dim`` for the whole model."""
    per_layer = getattr(arch, "per_layer_config", None)
    if per_layer is not None:
        return [int(per_layer[i].head_dim) for i in range(int(arch.num_hidden_layers))]
    head = getattr(arch, "head_dim", None) or arch.hidden_size // arch.num_attention_heads
    return [int(head)]


def max_head_dim(model_cfg: Any) -> int:
    """The largest head dim of the architecture in model.config (no weights)."""
    from omegaconf import OmegaConf

    from gemma_run.loading.random_weights import architecture_config

    return max(head_dims(architecture_config(OmegaConf.to_container(model_cfg.config, resolve=True), True)))


def _fits_head(attn: str, source: str, model_cfg: Any) -> tuple[str, str]:
    """``attn`` unless it is a FlashAttention whose kernels cannot take this model's largest head: then sdpa."""
    limit = FLASH_HEAD_DIM.get(attn)
    head = max_head_dim(model_cfg) if limit else 0
    if head <= (limit or 0):
        return attn, source
    why = f"{source}={attn} takes head dims up to {limit} and this model has {head}: sdpa instead"
    log.warning("attention: %s", why)
    return "sdpa", why


def choose(train_attn: str | None, model_cfg: Any) -> tuple[str | None, str]:
    """(attn_implementation for the loader, why): ``auto`` -> sdpa unless the model softcaps attention; a
    FlashAttention that cannot take the model's head dim -> sdpa."""
    if train_attn and train_attn != "auto":
        return _fits_head(train_attn, "train.attn_implementation", model_cfg)
    if model_cfg.attn_implementation:
        return _fits_head(model_cfg.attn_implementation, "model.attn_implementation", model_cfg)
    cap = attn_softcap(model_cfg)
    if cap is not None:
        return "eager", f"auto: the model softcaps attention logits ({cap}), which sdpa cannot"
    return "sdpa", "auto: no attention softcapping, so sdpa computes what eager does"
