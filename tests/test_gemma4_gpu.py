"""Gemma 4 at its real width on a CUDA GPU (skipped elsewhere), random weights built on the GPU, a few layers of
each kind (helpers.shapes: E4B with 4 layers, 2 of them sharing KV; 26B-A4B with 2 layers of 128 experts): the
fast engine's greedy tokens equal generate()'s in bf16 (the dense E4B with per-layer embeddings and shared KV, and
the 26B-A4B mixture of experts), and its int4 path agrees on the top-1 token with a reference computation (the same
int4 weights dequantized to bf16, eager, teacher-forced) at >= 99% of the positions it generated. The published
26B-A4B and 31B are the benchmark suite's (bench/gpu_suite.sh decode:gemma4)."""

from __future__ import annotations

import pytest
from helpers.decode import count_4bit_linears, generate_on_device, top1_agreement_after_unfusing
from helpers.run_if import RunIf
from helpers.shapes import GEMMA4_26B_A4B, GEMMA4_E4B

from gemma_run.infer.engine import HF, Decoder, EngineOptions

pytestmark = RunIf(gpus=1)
MODELS = {"gemma4_e4b": GEMMA4_E4B, "gemma4_26b_a4b": GEMMA4_26B_A4B}


def _prompts(n: int, length: int) -> list[list[int]]:
    import torch

    torch.manual_seed(0)
    return torch.randint(100, 20000, (n, length)).tolist()


@pytest.mark.parametrize("model", list(MODELS))
def test_fast_engine_equals_generate_on_a_real_width_gemma4(compose_cfg, model: str) -> None:
    """The fast loop with its step recorded as a CUDA graph (an eager step: the compiled one is the int4 test's),
    batch 2, 32 greedy tokens."""
    import torch

    from gemma_run.loading import load

    loaded = load(compose_cfg([*MODELS[model], "device_map=single"]))
    ids = _prompts(2, 64)
    ref = generate_on_device(loaded, ids, HF, 32)
    fast = generate_on_device(loaded, ids, EngineOptions("fast", False, True, "test", graph=True), 32)
    assert all(s.replay is not None for s in Decoder.of(loaded.model).sessions.values())
    same = (ref == fast).float().mean().item()
    print(f"\n{model}: fast vs generate() token equality {same:.4f}")
    assert torch.equal(ref, fast)


@RunIf(torchao=True)
def test_fast_int4_top1_agrees_with_dequantized_reference_on_gemma4(compose_cfg) -> None:
    from gemma_run.loading import load

    loaded = load(compose_cfg([*GEMMA4_E4B, "quant=int4"]))
    quantized = count_4bit_linears(loaded.model)
    (prompt,) = _prompts(1, 128)
    out = generate_on_device(loaded, [prompt], EngineOptions("fast", True, True, "test", graph=True, fuse=True), 128)
    agree = top1_agreement_after_unfusing(loaded, out, 128, quantized)
    print(f"\ngemma4_e4b int4: top-1 agreement of the fast path with the dequantized reference: {agree:.4f}")
    assert agree >= 0.99
