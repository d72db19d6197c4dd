"""Bytes one decode step reads, from the planner: the model's weights in the run's quant mode and the KV cache.

A decode step of a batch reads every weight once (the lm_head included; a tied embedding is that same tensor) and
each sequence's KV cache; a mixture of experts reads only the experts its tokens are routed to (the expected share
at this batch, ``planning.params.Moe.read_fraction``), and a lookup table such as Gemma 4's per-layer embeddings
one row per sequence (the plan's ``decode_unread_bytes``). The weights' bytes are the plan's (``make_plan``:
bitsandbytes' packed weights and scales tensor by tensor); the KV read is ``planning.kv.kv_bytes`` at each step's
context, averaged over the decode steps (prompt + 1 ... prompt + new - 1 tokens). Activations and the logits are
not counted: at batch sizes where decode is bandwidth-bound they are a rounding error next to the weights.
"""

from __future__ import annotations

from dataclasses import replace

from omegaconf import DictConfig


def decode_step_bytes(cfg: DictConfig, dtype: str, prompt: int, new: int, batch: int,
                      static_len: int = 0, stacked: bool = False) -> dict[str, int]:
    """{"weights_bytes", "kv_read_bytes", "bytes_per_step"} for this run's model and quant in ``dtype`` (the
    dtype the model was loaded in). ``static_len`` > 0: the fast engine's static cache, whose every layer's
    ``static_len`` positions a step's attention reads (masked or not). ``stacked``: the fast engine fused the
    sibling projections, which int4 then holds with less padding (``planning.memory.Quant.stacked``)."""
    from gemma_run.planning import inputs, kv, params, skeleton
    from gemma_run.planning.memory import DTYPE_BYTES
    from gemma_run.planning.plan import make_plan

    p, _ = inputs.from_cfg(cfg, "infer")
    p = replace(p, dtype=dtype, prompt=prompt, new_tokens=new, batch=batch, quant=replace(p.quant, stacked=stacked))
    plan = make_plan(p)
    shape = kv.shape_of(skeleton.text_config(skeleton.build(p.config, p.text_only, dtype)))
    steps = range(prompt + 1, prompt + new)  # the context of each step after the first token
    kv_read = sum(kv.kv_bytes(shape, ctx, batch, DTYPE_BYTES[dtype], static_len) for ctx in steps) // max(len(steps), 1)
    weights = int(plan["weights_bytes"]) - int(plan.get("decode_unread_bytes", 0))
    if plan.get("moe"):  # the experts no token of this batch is routed to stay unread
        moe = params.Moe(plan["moe"]["experts"], plan["moe"]["top_k"])
        weights -= round(int(plan["expert_bytes"]) * (1 - moe.read_fraction(batch)))
    return {"weights_bytes": weights, "kv_read_bytes": int(kv_read), "bytes_per_step": weights + int(kv_read)}


def limit_fraction(steps_per_second: float, bytes_per_step: int, bandwidth: float) -> float:
    """Achieved bytes/s over the measured bandwidth: 1.0 is decode at the memory-bandwidth limit."""
    return steps_per_second * bytes_per_step / bandwidth
