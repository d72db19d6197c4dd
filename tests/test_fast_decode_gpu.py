"""The fast engine on a CUDA GPU (skipped elsewhere): the tiny model's greedy tokens equal generate()'s with the
step recorded as a CUDA graph (compiled, and eager) in bf16, and on a random-weight gemma3_4b at its real width with
two layers (helpers.shapes.GEMMA3_4B; the whole 4B's compiled decode is the benchmark suite's) the fast 4-bit path
agrees on the top-1 token with a reference computation (the same 4-bit weights dequantized to bf16, eager,
teacher-forced) at >= 99% of the positions it generated."""

from __future__ import annotations

import pytest
from helpers.decode import count_4bit_linears, generate_on_device, top1_agreement_after_unfusing
from helpers.run_if import RunIf
from helpers.shapes import GEMMA3_4B, GEMMA3_4B_LAYERS

from gemma_run.infer.engine import HF, Decoder, EngineOptions

pytestmark = RunIf(gpus=1)


def _recorded(model, compile: bool) -> bool:
    """Whether the sessions of that kind replayed a recorded graph (not fallen back to plain calls)."""
    sessions = Decoder.of(model).find(compile=compile, graph=True)
    return bool(sessions) and all(s.replay is not None and s.compiled == compile for s in sessions)


@pytest.mark.parametrize(("compile", "attention", "fuse"),
                         [(True, None, False), (False, None, False), (True, "decode", False), (False, "decode", False),
                          (True, "decode", True), (False, None, True)],
                         ids=["compiled", "eager", "compiled-decode-attention", "eager-decode-attention",
                              "compiled-decode-attention-fused", "eager-fused"])
def test_graphed_fast_engine_equals_generate_on_tiny_bf16(compose_cfg, compile: bool, attention: str | None,
                                                          fuse: bool) -> None:
    """The reference is generate() on the model as loaded (unfused): fused projections must give its tokens."""
    import torch

    from gemma_run.infer.engine import decode_attention
    from gemma_run.loading import load

    name = decode_attention.register() if attention else None

    loaded = load(compose_cfg(["model.dtype=bfloat16", "device_map=single"]))
    tok = loaded.tokenizer
    ids = [tok("the cat sat on the mat and looked at the dog " * 3)["input_ids"], tok("hello there")["input_ids"]]
    ref = generate_on_device(loaded, ids, HF, 48)
    engine = EngineOptions("fast", compile, True, "test", graph=True, attention=name, fuse=fuse)
    fast = generate_on_device(loaded, ids, engine, 48)
    assert (loaded.model.__dict__.get("_gemma_run_fused_projections", 0) > 0) == fuse
    assert next(loaded.model.parameters()).device.type == "cuda"
    assert _recorded(loaded.model, compile)
    assert all(s.picker is not None for s in Decoder.of(loaded.model).sessions.values())  # greedy: picked on the GPU
    assert torch.equal(ref, fast)
    # the recorded graph serves the next prompt of that shape (cache and mask reset in place): the same tokens as
    # the same step called without a graph (generate() itself can part from the static cache's kernels on bf16
    # near-ties of a random model, as it did here after 45 tokens)
    other = [tok("a b c d e f g " * 4)["input_ids"], tok("the dog")["input_ids"]]
    plain = EngineOptions("fast", compile, True, "test", graph=False, attention=name, fuse=fuse)
    assert torch.equal(generate_on_device(loaded, other, plain, 48), generate_on_device(loaded, other, engine, 48))
    # and the loop picking each token on the host after the recorded step (generation.device_pick=false) agrees
    host = EngineOptions("fast", compile, True, "test", graph=True, attention=name, fuse=fuse, pick=False)
    assert torch.equal(generate_on_device(loaded, other, host, 48), generate_on_device(loaded, other, engine, 48))


def test_graphed_compiled_layers_equal_generate_on_tiny_bf16(compose_cfg) -> None:
    """generation.compile_scope=layers: the layers compiled through one function, recorded with the eager rest."""
    import torch

    from gemma_run.loading import load

    loaded = load(compose_cfg(["model.dtype=bfloat16", "device_map=single"]))
    tok = loaded.tokenizer
    ids = [tok("the cat sat on the mat and looked at the dog " * 3)["input_ids"], tok("hello there")["input_ids"]]
    ref = generate_on_device(loaded, ids, HF, 48)
    fast = generate_on_device(loaded, ids, EngineOptions("fast", True, True, "test", graph=True,
                                                         compile_scope="layers"), 48)
    assert _recorded(loaded.model, True)
    assert torch.equal(ref, fast)


def test_streaming_and_early_stop_through_the_lookout_on_a_gpu(compose_cfg) -> None:
    """On a GPU the loop looks at finished rows and streams without waiting for the GPU (watch.Lookout: one look
    later): the streamed tokens are still exactly the returned ones, and a finished batch stops within two looks."""
    from helpers.decode import check_streaming

    from gemma_run.loading import load

    loaded = load(compose_cfg(["model.dtype=bfloat16", "device_map=single"]))
    assert loaded.input_device.type == "cuda"
    check_streaming(loaded, graph=True)


@pytest.mark.parametrize("quant", [pytest.param("int4", marks=RunIf(torchao=True)),
                                   pytest.param("4bit", marks=RunIf(bnb=True))])
def test_fast_4bit_top1_agrees_with_dequantized_reference(compose_cfg, quant: str) -> None:
    """The fast path as the defaults run it: compiled, recorded, projections fused (int4: stacked tinygemm
    weights); the reference: the model's own 4-bit weights (put back by unfuse) dequantized, eager."""
    import torch

    from gemma_run.infer.engine import fused_projections
    from gemma_run.loading import load

    loaded = load(compose_cfg([*GEMMA3_4B, f"quant={quant}"]))
    quantized = count_4bit_linears(loaded.model)
    assert quantized == 7 * GEMMA3_4B_LAYERS  # q, k, v, o, gate, up, down: the output layer stays bf16
    torch.manual_seed(0)
    prompt = torch.randint(100, 20000, (1, 128)).tolist()
    out = generate_on_device(loaded, prompt, EngineOptions("fast", True, True, "test", graph=True, fuse=True), 128)
    assert _recorded(loaded.model, True)
    assert fused_projections.count(loaded.model) == (2 * GEMMA3_4B_LAYERS if quant == "int4" else 0)  # bnb's: not fused
    agree = top1_agreement_after_unfusing(loaded, out, 128, quantized)
    print(f"\n{quant}: top-1 agreement of the fast path with the dequantized reference over 128 tokens: {agree:.4f}")
    assert agree >= 0.99
