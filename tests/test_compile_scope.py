"""generation.compile_scope=layers (gemma_run.infer.engine.layer_compile): the decode step's decoder layers
compiled through one function, so a model compiles one graph per kind of layer, not per layer and not the whole
step: on CPU, the greedy tokens and stopping of generate(), and the graphs dynamo made counted."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers.decode import LONG, check_greedy_and_stopping, generate_tokens

from gemma_run.infer.engine import EngineOptions, choose_engine

LAYERS = 6
DEEPER = [f"model.config.num_hidden_layers={LAYERS}",
          "model.config.layer_types=[" + ",".join(["sliding_attention", "full_attention"] * (LAYERS // 2)) + "]"]


def _load(cache_dir: Path, overrides: list[str]):
    from gemma_run import compose
    from gemma_run.loading import load

    loaded = load(compose([f"cache_dir={cache_dir}", "model.dtype=float32", *overrides]))
    loaded.tokenizer.padding_side = "left"
    return loaded


def _graphs() -> int:
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


@pytest.mark.parametrize(("model", "kinds"), [("tiny_gemma3", 1), ("tiny_gemma4", 4)])
def test_layers_share_a_graph_per_kind_and_decode_as_generate(cache_dir: Path, model: str, kinds: int) -> None:
    """tiny_gemma3 made 6 layers deep (sliding and global alternating) compiles one graph; tiny_gemma4's 4 layers
    are 4 kinds (sliding and global, each with its own KV or another layer's)."""
    import torch

    torch._dynamo.reset()
    loaded = _load(cache_dir, [f"model={model}", *(DEEPER if model == "tiny_gemma3" else [])])
    layers = len(loaded.model.get_decoder().layers)
    options = EngineOptions("fast", True, True, "test", compile_scope="layers")
    before = _graphs()
    generate_tokens(loaded, [LONG, "hello there"], options, new=4)
    assert _graphs() - before == kinds
    assert layers == (LAYERS if model == "tiny_gemma3" else 4)
    check_greedy_and_stopping(loaded, options)
    assert _graphs() - before == kinds  # later prompts and shapes of the same batch reuse them
    assert all(layer._compiled_call_impl is None for layer in loaded.model.get_decoder().layers)  # plain again


def test_the_key_chooses_the_scope(compose_cfg) -> None:
    from gemma_run.loading import load

    loaded = load(compose_cfg())
    g = compose_cfg(["generation.compile=true", "generation.compile_scope=layers"]).generation
    engine = choose_engine(g, loaded.model)
    assert (engine.name, engine.compile, engine.compile_scope) == ("fast", True, "layers")
    assert "compiled layers" in engine.describe()
    assert choose_engine(compose_cfg(["generation.compile=true"]).generation, loaded.model).compile_scope == "step"
    with pytest.raises(ValueError, match="compile_scope"):
        EngineOptions("fast", True, compile_scope="model")
