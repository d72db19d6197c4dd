"""The published models at their real width and a few layers, with random weights, for the GPU tests.

A GPU test checks behaviour (tokens equal generate()'s, a peak within its plan, two loss curves equal), which a
model with every real layer shape shows as well as the whole depth: the same kernels, the same quantized layouts,
the same sliding and global layers, the same vocabulary. Fewer layers build, load, compile and train in a
fraction of the time; the published depths are measured by the benchmark suite (bench/gpu_suite.sh decode, train,
plan, kernels, build). Every test that uses one of these lists composes the same config, so the random checkpoint
is built once into the shared cache and a compiled step of that shape comes from the shared compile cache.
"""

from __future__ import annotations

from typing import Any

TEXT = "model.config.text_config"  # the language model's config inside a multimodal model's config

# Gemma 3 4B: one sliding and one global layer (Gemma 3's configs give layer_types by sliding_window_pattern,
# 5 sliding then 1 global, which two layers would cut to two sliding ones)
GEMMA3_4B = ["model=gemma3_4b", "model.weights=random", f"{TEXT}.num_hidden_layers=2",
             f"+{TEXT}.layer_types=[sliding_attention,full_attention]"]
GEMMA3_4B_LAYERS = 2

# Gemma 3 1B (text-only config: no text_config), as GEMMA3_4B
GEMMA3_1B = ["model=gemma3_1b", "model.weights=random", "model.config.num_hidden_layers=2",
             "+model.config.layer_types=[sliding_attention,full_attention]"]
GEMMA3_1B_LAYERS = 2

# Gemma 4 E4B: two sliding and two global layers, the last two sharing the keys/values of the first two (as the
# published model's last 18 layers share those of the last earlier layer of their type), per-layer embeddings kept
GEMMA4_E4B = ["model=gemma4_e4b", "model.weights=random", f"{TEXT}.num_hidden_layers=4",
              f"{TEXT}.layer_types=[sliding_attention,full_attention,sliding_attention,full_attention]",
              f"{TEXT}.num_kv_shared_layers=2"]

# Gemma 4 26B-A4B: one sliding and one global layer, each with its 128 experts (0.8B parameters a layer)
GEMMA4_26B_A4B = ["model=gemma4_26b_a4b", "model.weights=random", f"{TEXT}.num_hidden_layers=2",
                  f"{TEXT}.layer_types=[sliding_attention,full_attention]"]


def depth(model: str, layers: int) -> list[str]:
    """A Gemma 3 multimodal config (gemma3_4b, gemma3_27b) cut to ``layers`` decoder layers, layer_types still
    following its sliding_window_pattern (5 sliding, then 1 global)."""
    return [f"model={model}", "model.weights=random", f"{TEXT}.num_hidden_layers={layers}"]


def weight_params(cfg: Any) -> tuple[int, int]:
    """(the embedding table's parameters, the decoder layers' Linear parameters) of the composed run config's
    model, counted on the meta device: what a dtype or a quant stores at its own bytes per parameter."""
    import torch
    from omegaconf import OmegaConf
    from transformers import AutoModelForCausalLM

    from gemma_run.loading import random_weights

    arch = random_weights.architecture_config(OmegaConf.to_container(cfg.model.config), True)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(arch)
    linear = sum(m.weight.numel() for m in model.model.layers.modules() if isinstance(m, torch.nn.Linear))
    return model.model.embed_tokens.weight.numel(), linear
