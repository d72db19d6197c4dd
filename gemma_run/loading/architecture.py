"""Which model class a checkpoint directory is loaded as, and its empty skeleton for checking a device map.

Gemma 3 4B/12B/27B and every Gemma 4 checkpoint are multimodal (a vision tower, for Gemma 4 E2B/E4B an audio
tower too, + the language model). A text-only run (``model.text_only=true``, the default) loads only the language
model with the class ``TEXT_ONLY_CLASSES`` names for the checkpoint's model type (``Gemma3ForCausalLM``,
``Gemma4ForCausalLM``, ...): the other weights are never read, so they cost neither memory nor load time.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gemma_run.app.errors import GemmaRunError

# Checkpoint keys of the language model inside a multimodal checkpoint -> the keys of its text-only class.
# Hub checkpoints use `language_model.model.*`; transformers 5's in-memory names are `model.language_model.*`.
TEXT_ONLY_KEY_MAPPING = {
    r"^language_model\.model\.": "model.",
    r"^model\.language_model\.": "model.",
    r"^language_model\.lm_head\.": "lm_head.",
}
# Multimodal model types whose text-only run loads the language model alone -> the transformers class that does.
TEXT_ONLY_CLASSES = {
    "gemma3": "Gemma3ForCausalLM",
    "gemma4": "Gemma4ForCausalLM",
    "gemma4_unified": "Gemma4UnifiedForCausalLM",
}
MULTIMODAL_TYPES = tuple(TEXT_ONLY_CLASSES)


@dataclass
class Plan:
    """How to call from_pretrained for one checkpoint directory."""

    kind: str  # "causal_lm" | "text_only" (the language model of a multimodal checkpoint) | "image_text"
    model_type: str
    kwargs: dict[str, Any] = field(default_factory=dict)  # extra from_pretrained kwargs (config, key_mapping)

    @property
    def multimodal(self) -> bool:
        return self.kind == "image_text"


def read_config(path: Path) -> dict[str, Any]:
    """config.json of a checkpoint directory as a dict."""
    try:
        return json.loads((path / "config.json").read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise GemmaRunError(f"cannot read {path / 'config.json'}: {e}", key="model.path",
                            fix="point model.path at a Hugging Face checkpoint directory with a valid config.json") \
            from e


def text_config(path: Path, trust_remote_code: bool):  # -> transformers.PretrainedConfig
    """The language model's config of a multimodal checkpoint, with the special token ids it needs."""
    from transformers import AutoConfig

    full = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    text = full.text_config
    for name in ("bos_token_id", "eos_token_id", "pad_token_id"):
        if getattr(text, name, None) is None and getattr(full, name, None) is not None:
            setattr(text, name, getattr(full, name))
    return text


def plan(path: Path, text_only: bool, trust_remote_code: bool) -> Plan:
    """The class family and extra kwargs to load ``path`` with."""
    config = read_config(path)
    model_type = str(config.get("model_type", ""))
    if model_type in MULTIMODAL_TYPES and "text_config" in config:
        if text_only:
            return Plan("text_only", model_type, {"config": text_config(path, trust_remote_code),
                                                  "key_mapping": dict(TEXT_ONLY_KEY_MAPPING)})
        return Plan("image_text", model_type)
    return Plan("causal_lm", model_type)


def model_class(p: Plan):  # -> a transformers auto class or model class with from_pretrained/from_config
    if p.kind == "text_only":
        import transformers

        return getattr(transformers, TEXT_ONLY_CLASSES[p.model_type])
    if p.kind == "image_text":
        from transformers import AutoModelForImageTextToText

        return AutoModelForImageTextToText
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM


def skeleton(path: Path, p: Plan, trust_remote_code: bool):  # -> torch.nn.Module on the meta device
    """The model with no memory behind its weights: its module, parameter and buffer names, for free.

    Never built as ZeRO-3 weights, whatever DeepSpeed config the process has registered."""
    from accelerate import init_empty_weights
    from transformers import AutoConfig

    from gemma_run.loading.compat import without_zero3_init

    config = p.kwargs.get("config") or AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    cls = model_class(p)
    with without_zero3_init(), init_empty_weights(include_buffers=True):
        if cls.__name__.startswith("Auto"):
            return cls.from_config(config, trust_remote_code=trust_remote_code)
        return cls._from_config(config)
