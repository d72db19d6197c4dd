"""Schema of the ``model`` group: one architecture, where its weights come from, and how to load them."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from omegaconf import MISSING


class RandomStorage(Enum):
    auto = "auto"  # memory when the checkpoint would exceed 20 GB or the free disk of cache_dir, else disk
    disk = "disk"  # build once into cache_dir as safetensors, load with from_pretrained
    memory = "memory"  # build at every load, in memory (GPU when there is one); only config+tokenizer on disk


class Weights(Enum):
    pretrained = "pretrained"  # a local dir (`path`) or the hub id found in the local HF cache
    random = "random"  # the architecture in `config` with random weights, built locally (no download)
    auto = "auto"  # pretrained when `path` or `hub_id` names a checkpoint, else random (the tiny default)


@dataclass
class ModelConfig:
    name: str = MISSING
    # The architecture's hyper-parameters as in its published config.json (`model_type` first), so nothing
    # is fetched to know them. Multimodal checkpoints keep `text_config` / `vision_config` as published.
    config: dict[str, Any] = field(default_factory=dict)
    hub_id: str | None = None
    # A local checkpoint dir (config.json + *.safetensors). When given, those weights run and its config.json is
    # the architecture everywhere (plan, preflight, log, result.json); weights=random with a path is refused.
    path: str | None = None
    revision: str | None = None
    weights: Weights = Weights.pretrained
    seed: int = 0  # seed of random weights (weights=random)
    random_storage: RandomStorage = RandomStorage.auto  # weights=random: where the built weights live
    # auto: bf16 on GPUs that support it, else fp32 on CPU. float16 is refused for Gemma 3.
    dtype: str = "auto"
    trust_remote_code: bool = False
    # Pickle checkpoints (.bin/.pt) run code on load (torch.load, CVE-2025-32434); refused unless true.
    allow_pickle: bool = False
    attn_implementation: str | None = None  # eager | sdpa | flash_attention_2; null: the library's default
    # For multimodal checkpoints (Gemma 3 4B/12B/27B): true loads only the language model.
    text_only: bool = True
    # How to build the tokenizer of a random-weight model (the hub tokenizer is not available offline).
    tokenizer_vocab_size: int = 1024
    # Its chat format: the template and special tokens of a model family (gemma3 | gemma4, see
    # gemma_run.loading.tokenizer_build.TEMPLATES). A real checkpoint's tokenizer keeps its own.
    chat_template: str = "gemma3"
