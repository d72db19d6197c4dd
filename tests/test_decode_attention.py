"""The decode step's attention (gemma_run.infer.engine.decode_attention) against torch's sdpa: grouped heads, masks in
the forms transformers passes (boolean, additive, none), softcapping, and the switch of a model's implementation."""

from __future__ import annotations

import pytest


def _reference(query, key, value, mask, scaling, softcap=None):
    import torch

    groups = query.shape[1] // key.shape[1]
    k, v = key.repeat_interleave(groups, 1), value.repeat_interleave(groups, 1)
    scores = (query.float() @ k.float().transpose(-1, -2)) * scaling
    if softcap is not None:
        scores = torch.tanh(scores / softcap) * softcap
    if mask is not None:
        mask = mask[..., : key.shape[2]]
        scores = scores.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else scores + mask
    return (scores.softmax(-1) @ v.float()).transpose(1, 2)


@pytest.mark.parametrize(("heads", "kv_heads", "q_len"), [(8, 2, 1), (4, 4, 1), (6, 3, 5)])
@pytest.mark.parametrize("mask_kind", ["bool", "additive", "none"])
def test_decode_attention_equals_sdpa(heads: int, kv_heads: int, q_len: int, mask_kind: str) -> None:
    import torch

    from gemma_run.infer.engine.decode_attention import attention

    torch.manual_seed(0)
    batch, length, dim = 2, 24, 16
    q = torch.randn(batch, heads, q_len, dim)
    k, v = torch.randn(batch, kv_heads, length, dim), torch.randn(batch, kv_heads, length, dim)
    # row 0 attends to positions 3..19 (left padding, unfilled cache slots after), row 1 to 0..11; the mask is
    # longer than the keys, as transformers' may be
    keep = torch.zeros(batch, 1, q_len, length + 4, dtype=torch.bool)
    keep[0, :, :, 3:20] = True
    keep[1, :, :, :12] = True
    mask = {"bool": keep, "additive": torch.zeros(keep.shape).masked_fill(~keep, torch.finfo(torch.float32).min),
            "none": None}[mask_kind]

    class Module:
        is_causal = True

    out, weights = attention(Module(), q, k, v, mask, scaling=0.3)
    assert weights is None and out.shape == (batch, q_len, heads, dim)
    if mask is None and q_len > 1:  # like sdpa's is_causal: upper-left aligned
        mask = torch.ones(q_len, length, dtype=torch.bool).tril()[None, None]
    assert torch.allclose(out, _reference(q, k, v, mask, 0.3), atol=1e-5)
    sdpa = torch.nn.functional.scaled_dot_product_attention(
        q, k.repeat_interleave(heads // kv_heads, 1), v.repeat_interleave(heads // kv_heads, 1),
        attn_mask=None if mask is None else mask[..., :length], scale=0.3).transpose(1, 2)
    assert torch.allclose(out, sdpa, atol=1e-5)


def test_decode_attention_softcaps_like_gemma2() -> None:
    import torch

    from gemma_run.infer.engine.decode_attention import attention

    torch.manual_seed(1)
    q, k, v = torch.randn(1, 4, 1, 8) * 10, torch.randn(1, 2, 9, 8) * 10, torch.randn(1, 2, 9, 8)
    out, _ = attention(object(), q, k, v, None, scaling=1.0, softcap=5.0)
    assert torch.allclose(out, _reference(q, k, v, None, 1.0, softcap=5.0), atol=1e-5)
    assert not torch.allclose(out, _reference(q, k, v, None, 1.0), atol=1e-3)  # the cap changes the result


def test_implementation_switches_every_config_and_restores_it(bf16_tiny) -> None:
    from gemma_run.infer.engine import decode_attention

    model = bf16_tiny
    name = decode_attention.register()
    assert decode_attention.register() == name  # idempotent
    configs = decode_attention.configs(model)
    before = [c._attn_implementation for c in configs]
    with decode_attention.implementation(configs, name):
        assert {c._attn_implementation for c in configs} == {name}
    assert [c._attn_implementation for c in configs] == before
    with pytest.raises(RuntimeError), decode_attention.implementation(configs, name):
        raise RuntimeError("a failed step")
    assert [c._attn_implementation for c in configs] == before  # restored on errors too
    with decode_attention.implementation(configs, None):
        assert [c._attn_implementation for c in configs] == before


@pytest.fixture(scope="module")
def bf16_tiny(cache_dir):
    from gemma_run import compose
    from gemma_run.loading import load

    return load(compose([f"cache_dir={cache_dir}", "model.dtype=bfloat16"])).model
