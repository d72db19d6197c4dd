"""The decode step's attention: one new token per row against the static cache, as two small products and a
softmax on the key/value heads, which inductor fuses with what surrounds them.

Why: inside the compiled decode step, ``sdpa`` with the step's mask dispatches to a kernel made for long queries
(cuDNN's), plus small kernels that prepare its inputs; at batch 1 that kernel alone costs more than the layer's
key, value and output projections together. With one query per row, attention reads the
cache once and does little arithmetic; written as plain tensor operations, it compiles into a few fused kernels.

The query heads that share a key/value head are grouped into that head's rows (``[B, KV, G*Q, D]``), so the cache
is read once per key/value head: no ``repeat_kv`` copy of it, which would grow with the cache.
Masks arrive as transformers makes them for ``sdpa`` (a boolean "may attend" mask, or none), registered under
:data:`NAME` so transformers' mask and attention registries route the model's own calls here.

Used by :mod:`gemma_run.infer.engine` for the decode step only (``generation.step_attention``); the prompt's pass
keeps the model's own attention (it is compute-bound, and long prompts need a fused kernel's memory).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

NAME = "gemma_run_decode"


def register() -> str:
    """Make :data:`NAME` an attention implementation transformers knows (idempotent); returns it."""
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask
    from transformers.modeling_utils import AttentionInterface

    AttentionInterface.register(NAME, attention)
    AttentionMaskInterface.register(NAME, sdpa_mask)
    return NAME


@contextmanager
def implementation(configs: list[Any], name: str | None) -> Iterator[None]:
    """Run with attention implementation ``name`` set on ``configs`` (:func:`configs` of the model), then put
    the model's own back, errors included. ``None`` changes nothing."""
    if name is None:
        yield
        return
    saved = [(c, c._attn_implementation) for c in configs]
    try:
        for c, _ in saved:
            object.__setattr__(c, "_attn_implementation_internal", name)
        yield
    finally:
        for c, value in saved:
            object.__setattr__(c, "_attn_implementation_internal", value)


def configs(model: Any) -> list[Any]:
    """The distinct config objects the model's modules read their attention implementation from."""
    seen: dict[int, Any] = {}
    for module in model.modules():
        c = getattr(module, "config", None)
        if c is not None and hasattr(c, "_attn_implementation_internal"):
            seen.setdefault(id(c), c)
    return list(seen.values())


def attention(module: Any, query: Any, key: Any, value: Any, attention_mask: Any, dropout: float = 0.0,
              scaling: float | None = None, softcap: float | None = None, **kwargs: Any) -> tuple[Any, None]:
    """transformers' attention-function signature: query [B, H, Q, D], key/value [B, KV, L, D], mask [B, 1|H, Q,
    >=L] (boolean, True where attending) or None; returns ([B, Q, H, D], None). Dropout is not applied (inference)."""
    import torch

    batch, heads, q_len, dim = query.shape
    kv_heads, length = key.shape[1], key.shape[2]
    groups = heads // kv_heads
    if scaling is None:
        scaling = dim ** -0.5
    q = query.reshape(batch, kv_heads, groups * q_len, dim)  # head h = kv * groups + g
    scores = torch.matmul(q, key.transpose(-1, -2)).float() * scaling  # [B, KV, G*Q, L]
    if softcap is not None:
        scores = torch.tanh(scores / softcap) * softcap
    scores = scores.view(batch, kv_heads, groups, q_len, length)
    mask = attention_mask
    if mask is None and q_len > 1 and getattr(module, "is_causal", True):  # as sdpa's is_causal: upper-left
        mask = torch.ones(q_len, length, dtype=torch.bool, device=query.device).tril()[None, None]
    if mask is not None:
        mask = mask[..., :length]
        mask = mask[:, :, None] if mask.shape[1] == 1 else mask.view(mask.shape[0], kv_heads, groups, q_len, length)
        if mask.dtype == torch.bool:
            scores = scores.masked_fill(~mask, torch.finfo(torch.float32).min)
        else:
            scores = scores + mask.float()
    probs = scores.softmax(dim=-1).to(value.dtype).view(batch, kv_heads, groups * q_len, length)
    out = torch.matmul(probs, value).view(batch, heads, q_len, dim)
    return out.transpose(1, 2).contiguous(), None
