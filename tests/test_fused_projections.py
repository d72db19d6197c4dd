"""Fused q/k/v and gate/up projections (gemma_run.infer.engine.fused_projections) on CPU: the tiny Gemma 3 gives the
same logits fused as unfused, the fusion is idempotent and skips layers it must not touch, a compiled forward
runs one matrix product per group, and the fast engine with fused projections gives the unfused model's greedy
tokens through generate()."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
from helpers.run_if import RunIf

from gemma_run.infer.engine import fused_projections as fp


@pytest.fixture(scope="module")
def tiny(cache_dir: Path):
    from gemma_run import compose
    from gemma_run.loading import load

    loaded = load(compose([f"cache_dir={cache_dir}", "model.dtype=float32"]))
    loaded.tokenizer.padding_side = "left"
    return loaded


def test_fused_model_gives_the_same_logits_and_is_fused_once(tiny) -> None:
    import torch

    model = copy.deepcopy(tiny.model)
    ids = torch.randint(2, 500, (2, 24))
    with torch.no_grad():
        ref = model(ids).logits
        layers = model.config.num_hidden_layers
        assert fp.fuse(model) == 2 * layers  # q/k/v and gate/up in every layer
        assert fp.fuse(model) == 2 * layers  # nothing more the second time
        got = model(ids).logits
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)
    attn = model.model.layers[0].self_attn
    assert type(attn.q_k_v_fused).__name__ == "FusedLinear"
    assert tuple(attn.q_k_v_fused.weight.shape) == (64 + 32 + 32, 64)
    names = list(model.state_dict())
    assert not any(n.endswith(("q_proj.weight", "gate_proj.weight")) for n in names)
    assert attn.q_k_v_fused._parts is None  # the kept product is dropped once every part took its slice
    # code that reads a projection's weight still sees its own rows
    assert torch.equal(attn.k_proj.weight, tiny.model.model.layers[0].self_attn.k_proj.weight)


def test_parts_called_on_other_inputs_compute_afresh(tiny) -> None:
    """A model that calls the parts on different inputs (or in another order) still gets each projection right."""
    import torch

    mlp = copy.deepcopy(tiny.model.model.layers[0].mlp)
    ref = copy.deepcopy(mlp)
    assert fp.fuse(mlp) == 1
    a, b = torch.randn(3, 64), torch.randn(3, 64)
    with torch.no_grad():
        torch.testing.assert_close(mlp.up_proj(a), ref.up_proj(a))
        torch.testing.assert_close(mlp.gate_proj(b), ref.gate_proj(b))
        torch.testing.assert_close(mlp.up_proj(b), ref.up_proj(b))


def test_only_plain_linears_of_one_shape_are_fused() -> None:
    import torch

    class Attn(torch.nn.Module):
        def __init__(self, k_in: int = 8, k_type: type = torch.nn.Linear) -> None:
            super().__init__()
            self.q_proj, self.v_proj = torch.nn.Linear(8, 4, bias=False), torch.nn.Linear(8, 4, bias=False)
            self.k_proj = k_type(k_in, 4, bias=False)

    class Adapted(torch.nn.Linear):  # stands for peft's or bitsandbytes' Linear subclasses
        pass

    hooked = Attn()
    hooked.k_proj._hf_hook = object()  # accelerate moves its weights around: not fused
    for model in (Attn(k_in=6), Attn(k_type=Adapted), hooked):
        assert fp.fuse(model) == 0
        assert type(model.q_proj) is torch.nn.Linear
    assert fp.fuse(Attn()) == 1


def test_compiled_forward_runs_one_product_per_group(tiny) -> None:
    import torch

    model = copy.deepcopy(tiny.model)
    fp.fuse(model)
    products: list[int] = []

    def count(gm: torch.fx.GraphModule, inputs: list) -> torch.fx.GraphModule:
        products.append(sum(1 for n in gm.graph.nodes if n.target is torch._C._nn.linear))
        return gm

    ids = torch.randint(2, 500, (1, 8))
    with torch.no_grad():
        torch.compile(model, backend=count, fullgraph=True)(ids)
    layers = model.config.num_hidden_layers
    # a layer: q/k/v (1), o (1), gate/up (1), down (1); and the lm_head
    assert products == [4 * layers + 1]


def test_fast_engine_with_fused_projections_gives_generates_tokens(cache_dir: Path) -> None:
    """bf16, a left-padded batch whose long prompt passes the sliding window: the fast engine on the fused model
    (eager and compiled step) gives generate()'s greedy tokens on the model as loaded."""
    from helpers.decode import LONG, generate_tokens

    from gemma_run import compose
    from gemma_run.infer.engine import HF, EngineOptions
    from gemma_run.loading import load

    loaded = load(compose([f"cache_dir={cache_dir}", "model.dtype=bfloat16"]))
    loaded.tokenizer.padding_side = "left"
    prompts = [LONG, "hello there"]
    ref = generate_tokens(loaded, prompts, HF, min_new_tokens=32)
    for compiled in (False, True):
        engine = EngineOptions("fast", compiled, True, "test", fuse=True)
        fast = generate_tokens(loaded, prompts, engine, min_new_tokens=32)
        assert loaded.model.__dict__[fp.MARK] == 2 * loaded.model.config.num_hidden_layers
        assert [o.completion for o in fast] == [o.completion for o in ref], compiled


def test_fuse_projections_drops_sessions_recorded_before(cache_dir: Path) -> None:
    from gemma_run import compose
    from gemma_run.infer.engine import Decoder, EngineOptions
    from gemma_run.loading import load

    model = load(compose([f"cache_dir={cache_dir}"])).model
    decoder = Decoder.of(model)
    key = decoder.key(1, 32, EngineOptions("fast"), cuda=False, greedy=False)
    decoder.session(key)
    assert decoder.sessions
    assert decoder.fuse() > 0
    assert not decoder.sessions
    groups = 2 * model.config.num_hidden_layers
    assert fp.count(model) == groups
    decoder.session(key)
    assert decoder.fuse() == groups and decoder.sessions  # a second call changes nothing


def test_fused_in_inference_mode_then_unfused_trains_with_peft(tiny) -> None:
    """The engine fuses inside inference_mode (a generate call): the fused weights are still plain tensors, and
    unfusing gives back the model as loaded (same logits, same state dict names), which peft wraps and trains
    (what task=test's smoke.lora does after smoke.fast_engine)."""
    import torch
    from peft import LoraConfig, get_peft_model

    from gemma_run.infer.engine import Decoder, EngineOptions

    model = copy.deepcopy(tiny.model)
    decoder = Decoder.of(model)
    names = list(model.state_dict())
    ids = torch.randint(2, 500, (1, 16))
    with torch.no_grad():
        ref = model(ids).logits
    with torch.inference_mode():
        assert decoder.fuse() == 4
    fused = model.model.layers[0].mlp.gate_up_fused.weight
    assert not fused.is_inference()
    decoder.session(decoder.key(1, 32, EngineOptions("fast"), cuda=False, greedy=False))
    assert decoder.unfuse() == 4 and fp.count(model) == 0
    assert not decoder.sessions  # recorded against the fused weights: dropped
    assert list(model.state_dict()) == names and type(model.model.layers[0].mlp.up_proj) is torch.nn.Linear
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, ref, rtol=0, atol=0)
    peft = get_peft_model(model, LoraConfig(r=4, target_modules="all-linear", task_type="CAUSAL_LM"))
    peft(input_ids=ids, labels=ids).loss.backward()
    assert any("q_proj.lora_A" in n for n, p in peft.named_parameters() if p.grad is not None)
    assert decoder.unfuse() == 0  # nothing fused: nothing to undo


def _int4_linear(out: int, k: int, group: int = 128, tiles: int = 8):
    """A torchao int4 linear in the CUDA layout as loaded (in_features padded to 1024, out_features to 8), with
    random packed data: the stacking is checked by where each value lands, not by computing with it (tinygemm
    runs on CUDA only)."""
    import torch
    from torchao.quantization import Int4TilePackedTo4dTensor

    padded, rows = -(-k // 1024) * 1024, -(-out // 8) * 8
    qdata = torch.randint(-2**31, 2**31 - 1, (rows // 8, padded // (tiles * 16), 32, tiles // 2), dtype=torch.int32)
    sz = torch.randn(padded // group, rows, 2).to(torch.bfloat16)
    linear = torch.nn.Linear(k, out, bias=False, device="meta")
    linear.weight = torch.nn.Parameter(Int4TilePackedTo4dTensor(qdata, sz, [1, group], torch.Size([out, k])),
                                       requires_grad=False)
    return linear


def test_int4_siblings_stack_without_the_padding_and_unstack_as_loaded() -> None:
    """27B's q/k/v shapes: torchao stores 5376 inputs padded to 6144; the stacked weight keeps 42 K tiles of 128
    (q's row tiles, then k's, then v's; their scales side by side), and unfusing gives back torchao's tensors
    with every stored value where it was (the padding zeros)."""
    import torch

    class Attn(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.q_proj, self.k_proj, self.v_proj = _int4_linear(64, 5376), _int4_linear(32, 5376), \
                _int4_linear(32, 5376)

    attn = Attn()
    before = {n: getattr(attn, n).weight for n in ("q_proj", "k_proj", "v_proj")}
    assert fp.fuse(attn) == 1
    fused = attn.q_k_v_fused
    assert type(fused).__name__ == "FusedInt4Linear" and fused.k_stored == 5376
    assert tuple(fused.qdata.shape) == (128 // 8, 42, 32, 4) and tuple(fused.scale_and_zero.shape) == (42, 128, 2)
    assert torch.equal(fused.qdata[64 // 8: 96 // 8], before["k_proj"].qdata[:, :42])
    assert torch.equal(fused.scale_and_zero[:, 96:], before["v_proj"].scale_and_zero[:42])
    assert torch.equal(attn.k_proj.weight, before["k_proj"].qdata[:, :42])  # a part's weight: its packed rows
    stored = sum(t.numel() * t.element_size() for t in (fused.qdata, fused.scale_and_zero))
    loaded = sum(w.qdata.numel() * 4 + w.scale_and_zero.numel() * 2 for w in before.values())
    assert stored / loaded == 5376 / 6144  # the padding is gone
    assert fp.unfuse(attn) == 1
    for name, old in before.items():
        new = getattr(attn, name).weight
        assert type(new).__name__ == "Int4TilePackedTo4dTensor" and new.shape == old.shape
        assert new.qdata.shape == old.qdata.shape and new.scale_and_zero.shape == old.scale_and_zero.shape
        assert torch.equal(new.qdata[:, :42], old.qdata[:, :42]) and not new.qdata[:, 42:].any()
        assert torch.equal(new.scale_and_zero[:42], old.scale_and_zero[:42])


def test_int4_linears_that_cannot_stack_are_left_alone() -> None:
    """Row counts off tinygemm's 8-row tiles, different group sizes or inner tiles, or a mix with a plain linear."""
    import torch

    class Mlp(torch.nn.Module):
        def __init__(self, gate, up) -> None:
            super().__init__()
            self.gate_proj, self.up_proj = gate, up

    for gate, up in ((_int4_linear(64, 256), _int4_linear(64, 256, group=64)),
                     (_int4_linear(64, 256), _int4_linear(64, 256, tiles=4)),
                     (_int4_linear(64, 256), torch.nn.Linear(256, 64, bias=False))):
        assert fp.fuse(Mlp(gate, up)) == 0
    assert fp.fuse(Mlp(_int4_linear(64, 256), _int4_linear(60, 256))) == 0  # stored as 64 rows
    assert fp.fuse(Mlp(_int4_linear(64, 256), _int4_linear(128, 256))) == 1


@RunIf(gpus=1, torchao=True)
def test_gpu_int4_stacked_gives_torchaos_logits_bit_for_bit(compose_cfg) -> None:
    """On CUDA (tinygemm): the tiny model in int4 gives the same logits, bit for bit, with its projections
    stacked (64 inputs stored as 128, not torchao's 1024), and again once unfused."""
    import torch

    from gemma_run.loading import load

    model = load(compose_cfg(["quant=int4", "quant.group_size=64", "model.dtype=bfloat16"])).model
    ids = torch.randint(2, 500, (2, 24), device="cuda")
    with torch.inference_mode():
        ref = model(ids).logits
        assert fp.fuse(model) == 2 * model.config.num_hidden_layers
        fused = model.model.layers[0].mlp.gate_up_fused
        assert type(fused).__name__ == "FusedInt4Linear" and fused.k_stored == 128
        got = model(ids).logits
        assert fp.unfuse(model) == 2 * model.config.num_hidden_layers
        again = model(ids).logits
    assert torch.equal(got, ref) and torch.equal(again, ref)


@RunIf(gpus=1, torchao=True)
def test_gpu_single_int4_linear_without_padding_gives_torchaos_product() -> None:
    """quant.lm_head=int4's output layer: one torchao int4 linear held unpadded (320 inputs stored as 384, not
    1024) computes what torchao computes, bit for bit."""
    import torch
    from torchao.quantization import Int4WeightOnlyConfig, quantize_

    linear = torch.nn.Linear(320, 256, bias=False, dtype=torch.bfloat16, device="cuda")
    quantize_(linear, Int4WeightOnlyConfig(group_size=64, int4_packing_format="tile_packed_to_4d"))
    single = fp.stack_int4([linear])
    assert single.k_stored == 384 and tuple(single.qdata.shape)[:2] == (32, 3)
    x = torch.randn(3, 5, 320, dtype=torch.bfloat16, device="cuda")
    with torch.no_grad():
        assert torch.equal(single(x), linear(x))
