"""The model's skeleton on the meta device: the real module tree, built from model.config, with no memory.

It is built exactly as the loading path builds the model (the same transformers config, the same
``AutoModelForCausalLM`` class, text-only or multimodal), so the counts are those of the model that loads.
"""

from __future__ import annotations

import json
from functools import lru_cache
from typing import Any

from gemma_run.app.errors import GemmaRunError


def build(config: dict[str, Any], text_only: bool, dtype: str = "bfloat16"):  # -> transformers.PreTrainedModel
    """The model of ``config`` (a published config.json as a dict) on the meta device, in ``dtype``."""
    return _build(json.dumps(config, sort_keys=True), text_only, dtype)


@lru_cache(maxsize=8)
def _build(config_json: str, text_only: bool, dtype: str):
    import torch
    from transformers import AutoModelForCausalLM

    from gemma_run.loading.compat import dtype_kwarg, without_zero3_init
    from gemma_run.loading.random_weights import architecture_config

    config = json.loads(config_json)
    try:
        arch = architecture_config(config, text_only)
        with without_zero3_init(), torch.device("meta"):
            # torch_dtype= on transformers < 4.56 (gemma_run.loading.compat)
            model = AutoModelForCausalLM.from_config(arch, **{dtype_kwarg(): getattr(torch, dtype)})
    except (KeyError, ValueError, TypeError) as e:  # unknown model_type, a bad value, a class with no causal LM
        raise GemmaRunError(f"cannot build the architecture of model.config ({type(e).__name__}: {e})",
                            key="model.config",
                            fix="copy the values from the checkpoint's published config.json (model_type first)") \
            from e
    model.eval()
    return model


def text_config(model: Any) -> Any:
    """The language model's config (the text_config of a multimodal model)."""
    cfg = model.config
    return cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg
