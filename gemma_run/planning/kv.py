"""KV cache and activation memory, from the language model's shape.

KV cache: per decoder layer, batch x 2 (K and V) x kv_heads x head_dim x tokens x dtype bytes. A sliding
layer (Gemma 3: 5 of every 6; Gemma 2: every other one) keeps at most ``sliding_window`` tokens (transformers'
sliding cache layers), a global layer the whole context.

Gemma 4 varies this per layer (transformers' ``per_layer_config``): its global layers have their own head_dim
(``global_head_dim``) and KV head count (``num_global_key_value_heads``). With ``attention_k_eq_v`` a global layer
has no v_proj, but the cache still stores K and V apart (V is K's projection before k_norm and rotary), so it
counts twice like any other. The last ``num_kv_shared_layers`` layers reuse an earlier layer's K and V and keep
no cache of their own (transformers gives them a dummy cache layer).

Activations are an estimate from the ops of one decoder layer (see ``layer_forward_bytes``) plus the logits;
bench/plan_accuracy.py measures how close it is on a GPU.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

MiB = 2**20
# CUDA workspaces the caching allocator holds once matmuls run (cuBLAS/cuBLASLt: 32 MiB on Hopper, per stream).
WORKSPACE = 64 * MiB


@dataclass(frozen=True)
class Shape:
    """What the memory formulas need to know about a language model."""

    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    layer_types: tuple[str, ...]  # "full_attention" | "sliding_attention" per layer
    sliding_window: int | None
    logit_softcap: bool
    # per layer (kv_heads, head_dim) where layers differ (Gemma 4); kv_heads 0: the layer keeps no cache of its own
    layer_kv: tuple[tuple[int, int], ...] = ()

    def kv_of(self, layer: int) -> tuple[int, int]:
        """(kv_heads, head_dim) of the cache of layer ``layer`` (kv_heads 0: it reuses another layer's)."""
        return self.layer_kv[layer] if self.layer_kv else (self.kv_heads, self.head_dim)

    @property
    def q_dim(self) -> int:  # the widest layer's: the activations' peak
        return self.heads * max([self.head_dim, *(d for _, d in self.layer_kv)])

    @property
    def kv_dim(self) -> int:
        return max([self.kv_heads * self.head_dim, *(h * d for h, d in self.layer_kv)])


def _per_layer(text_cfg: Any) -> list[Any] | None:
    """transformers' per-layer configs of a heterogeneous model (Gemma 4), whose global config refuses to answer
    per-layer attributes such as head_dim; None for a uniform model."""
    per_layer = getattr(text_cfg, "per_layer_config", None)
    return list(per_layer) if per_layer is not None else None


def layer_kv(text_cfg: Any) -> tuple[tuple[int, int], ...]:
    """(kv_heads, head_dim) of each layer's cache of a heterogeneous model, kv_heads 0 for a layer that reuses
    another's KV (``kv_sharing_modes`` "reuse"); () for a uniform model."""
    per_layer = _per_layer(text_cfg)
    if not per_layer:
        return ()
    modes = list(getattr(text_cfg, "kv_sharing_modes", None) or [None] * len(per_layer))
    return tuple((0 if mode == "reuse" else lc.num_key_value_heads, lc.head_dim)
                 for lc, mode in zip(per_layer, modes, strict=True))


def shape_of(text_cfg: Any) -> Shape:
    """The :class:`Shape` of a transformers text config (Gemma 2/3/4, GPT-2, Llama-like)."""
    per_layer = _per_layer(text_cfg)
    first = per_layer[0] if per_layer else text_cfg  # a heterogeneous model's uniform values: its first layer's
    g = lambda *names, default=None, cfg=text_cfg: next(  # noqa: E731
        (getattr(cfg, n) for n in names if getattr(cfg, n, None) is not None), default)
    hidden = g("hidden_size", "n_embd")
    layers = g("num_hidden_layers", "n_layer")
    heads = g("num_attention_heads", "n_head")
    kv_heads = g("num_key_value_heads", default=heads, cfg=first)
    head_dim = g("head_dim", default=hidden // heads, cfg=first)
    inter = g("intermediate_size", "n_inner", default=4 * hidden)
    window = g("sliding_window")
    types = tuple(g("layer_types", default=None) or ["full_attention"] * layers)
    if window is None:
        types = tuple("full_attention" for _ in types)
    return Shape(hidden, inter, layers, heads, kv_heads, head_dim, g("vocab_size"), types, window,
                 bool(g("final_logit_softcapping")), layer_kv(text_cfg))


def kv_tokens(shape: Shape, layer: int, context: int, static_len: int = 0) -> int:
    """Tokens layer ``layer`` keeps in its cache for a context of ``context`` tokens. ``static_len`` > 0: the
    fast engine's static cache, where every layer, sliding ones included, holds that many positions."""
    if static_len:
        return static_len
    if shape.layer_types[layer] == "sliding_attention" and shape.sliding_window:
        return min(context, shape.sliding_window)
    return context


def kv_layer_bytes(shape: Shape, layer: int, context: int, batch: int, dtype_bytes: int, static_len: int = 0) -> int:
    kv_heads, head_dim = shape.kv_of(layer)
    return batch * 2 * kv_heads * head_dim * kv_tokens(shape, layer, context, static_len) * dtype_bytes


def kv_bytes(shape: Shape, context: int, batch: int, dtype_bytes: int, static_len: int = 0) -> int:
    """The whole KV cache."""
    return sum(kv_layer_bytes(shape, i, context, batch, dtype_bytes, static_len) for i in range(shape.layers))


def layer_forward_bytes(shape: Shape, tokens: int, dtype_bytes: int) -> int:
    """Peak of transient tensors inside one decoder layer's forward without autograd (inference).

    Per token: the norms upcast to fp32 (input, fp32 copy, fp32 result: ~10 x hidden bytes), q/k/v and their
    rotary copies (2 x (q + 2 kv) elements), the attention output, and the MLP's three live tensors of the
    intermediate size (activation, up, product).
    """
    per_token = (10 * shape.hidden + dtype_bytes * (2 * (shape.q_dim + 2 * shape.kv_dim) + shape.q_dim
                                                    + 3 * shape.intermediate))
    return tokens * per_token


def layer_saved_bytes(shape: Shape, tokens: int, dtype_bytes: int) -> int:
    """Tensors one decoder layer saves for backward (training without checkpointing), per the ops it runs:
    4 RMSNorms (fp32 input + normalised output: 8 x hidden each, q/k norms alike), the inputs of q/k/v, o and
    the MLP projections, rotary q/k, attention output and log-sum-exp, and the MLP's gate, activation and up.
    """
    h, q, kv, i = shape.hidden, shape.q_dim, shape.kv_dim, shape.intermediate
    norms = 4 * 8 * h + 8 * (q + kv)
    attn = dtype_bytes * (h + 3 * (q + 2 * kv) + 2 * q) + 4 * shape.heads
    mlp = dtype_bytes * (h + 4 * i)
    return tokens * (norms + attn + mlp)


def logits_generate_bytes(shape: Shape, batch: int, dtype_bytes: int) -> int:
    """generate() computes the last position's logits only (logits_to_keep=1): the model's logits plus the
    fp32 copy and the processed scores."""
    copies = 3 if shape.logit_softcap else 1
    return batch * shape.vocab * (copies * dtype_bytes + 2 * 4)


def logits_train_bytes(shape: Shape, tokens: int, dtype_bytes: int) -> int:
    """Logits of every position and the loss: bf16 logits (kept by the output), the fp32 upcast and the saved
    log-softmax (fp32), and in backward the bf16 gradient of the logits: 12 bytes a logit in bf16 (the plan
    against a measured peak: docs/benchmarks.md)."""
    softcap = 2 * dtype_bytes if shape.logit_softcap else 0
    return tokens * shape.vocab * (dtype_bytes + 4 + 4 + dtype_bytes + softcap)


def prefill_mask_bytes(shape: Shape, batch: int, prompt: int) -> int:
    """A boolean attention mask batch x prompt x prompt is built when sliding layers need one (prompt > window)."""
    if shape.sliding_window and prompt > shape.sliding_window and "sliding_attention" in shape.layer_types:
        return batch * prompt * prompt
    return 0
