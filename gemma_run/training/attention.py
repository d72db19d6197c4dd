"""``train.attn_implementation=auto``: sdpa where it computes what eager computes, eager where it cannot.

sdpa has no attention-logit softcapping: Gemma 2 softcaps (``attn_logit_softcapping``, 50.0 by default) and
transformers refuses sdpa for it (``_supports_sdpa = False``), so it trains with eager. Gemma 3 dropped the
softcapping (``attn_logit_softcapping=None``) for QK-norm: sdpa gives the same attention, faster and without the
[heads, seq, seq] fp32 scores of eager. Packed rows stay apart under sdpa: with no attention_mask and no cache,
transformers reads the restarts of ``position_ids`` (masking_utils.find_packed_sequence_indices) and builds a
block-causal mask (tests/test_train_fast.py checks it against the sequences run one by one).
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


def choose(train_attn: str | None, model_cfg: Any) -> tuple[str | None, str]:
    """(attn_implementation for the loader, why): ``auto`` -> sdpa unless the model softcaps attention."""
    if train_attn and train_attn != "auto":
        return train_attn, "train.attn_implementation"
    if model_cfg.attn_implementation:
        return model_cfg.attn_implementation, "model.attn_implementation"
    cap = attn_softcap(model_cfg)
    if cap is not None:
        return "eager", f"auto: the model softcaps attention logits ({cap}), which sdpa cannot"
    return "sdpa", "auto: no attention softcapping, so sdpa computes what eager does"
