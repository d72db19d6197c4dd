"""The decode step: one forward of the model for one new token per row on the session's static cache, compiled by
inductor or eager, with its attention implementation switched around it and, for greedy runs, the pick of the
next token inside it (:mod:`gemma_run.infer.engine.sampling`)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any


def make_step(model: Any, cache: Any, *, compile: bool, exact: bool, attention: str | None = None,
              greedy: bool = False, pick_placement: str = "with_step",
              compile_scope: str = "step") -> Callable[..., Any]:
    """The decode step; with ``attention``, the model runs it with that attention implementation (switched around
    each call, so the prompt's pass keeps the model's own; a recorded graph holds the step's kernels).
    ``greedy``: the step takes a Picker's buffers (``Picker.args()``) and picks its token itself, the pick placed
    as ``pick_placement`` says (:data:`gemma_run.infer.engine.options.PICK_PLACEMENTS`). ``compile_scope="layers"``:
    the decoder layers compiled (:mod:`gemma_run.infer.engine.layer_compile`), the rest of the step eager."""
    import torch

    from gemma_run.infer.engine import decode_attention, layer_compile
    from gemma_run.infer.engine.sampling import greedy_step, pick_in_step

    by_layer = compile and compile_scope == "layers"
    layers_compiled = layer_compile.compiled_layers(model, cache, compile_options(exact)) if by_layer \
        else contextlib.nullcontext

    def step(input_ids: Any, position_ids: Any, cache_position: Any, attention_mask: Any) -> Any:
        with layers_compiled():
            out = model(input_ids=input_ids, position_ids=position_ids, cache_position=cache_position,
                        attention_mask=attention_mask, past_key_values=cache, use_cache=True, return_dict=True)
        return out.logits[:, -1, :].float()

    def compiled(fn: Callable[..., Any]) -> Callable[..., Any]:
        if not compile or by_layer:
            return fn
        return torch.compile(fn, fullgraph=True, dynamic=False, options=compile_options(exact))

    if not greedy:
        run = compiled(step)
    elif pick_placement == "with_step":
        run = compiled(greedy_step(step, pick_in_step))
    else:
        pick = compiled(pick_in_step) if pick_placement == "compiled_apart" else pick_in_step
        run = greedy_step(compiled(step), pick)
    if attention is None:
        return run
    configs = decode_attention.configs(model)  # found once: a step without a graph switches at every call

    def with_attention(*args: Any) -> Any:
        with decode_attention.implementation(configs, attention):
            return run(*args)

    return with_attention


def compile_options(exact: bool) -> dict[str, Any]:
    """Inductor's options for the decode step. No ``triton.cudagraphs``: the engine records the CUDA graph
    itself (:mod:`gemma_run.infer.engine.graph`), which also serves the eager step and tensor-subclass weights.

    - ``coordinate_descent_tuning``: inductor tunes its own batch-1 matrix-vector kernels (fused with the norms
      around them) instead of calling cuBLAS; they read the weights closer to the memory's bandwidth, for a
      longer first compile, which the compile cache then saves.
    - ``emulate_precision_casts``: bf16 rounded wherever eager rounds it, so the compiled step picks eager's
      greedy tokens (``generation.exact``).
    - ``combo_kernels``: independent kernels (the query's and key's norms and rotations, the key's and value's
      cache writes, ...) launched as one, fewer launches and gaps a step. Programmatic dependent launch
      (``triton.enable_pdl``) is left off: it gained nothing here.
    """
    return {"coordinate_descent_tuning": True, "emulate_precision_casts": exact, "combo_kernels": True}
