"""quant=4bit's NF4 linears under gemma-run's 4-bit kernel (gemma_run.infer.engine.packed_4bit): the same bytes
(nothing copied, nibbles swapped in place), the same products, fused projections on the same storage, the
bitsandbytes modules back byte for byte, and the fast engine's greedy tokens equal generate()'s. On the CPU the
modules multiply through the kernel's reference path; the kernel itself is checked in test_gemv4.py."""

from __future__ import annotations

import copy

import pytest
from helpers.run_if import RunIf

pytestmark = RunIf(bnb=True)
# tiny_gemma3 four NF4 blocks wide (256 inputs), so that every projection's quantized absmax fills whole blocks of
# 256 codes, as in every real Gemma: q 128 rows, k/v 64, gate/up 128, o/down 256
WIDE = ["model.config.hidden_size=256", "model.config.head_dim=64", "model.config.query_pre_attn_scalar=64"]


def _load(overrides: list[str]):
    import os

    from gemma_run import compose
    from gemma_run.loading import load

    cache = os.environ.get("GEMMA_RUN_TEST_CACHE")
    loaded = load(compose([*([f"cache_dir={cache}"] if cache else []), "device_map=cpu", "quant=4bit",
                           "quant.compute_dtype=float32", *overrides]))
    loaded.tokenizer.padding_side = "left"
    _keep_bitsandbytes_layout(loaded.model)
    return loaded


def _keep_bitsandbytes_layout(model) -> None:
    """On a CPU with AVX512-BF16, bitsandbytes repacks each NF4 weight for its CPU kernel at its first forward
    (test_a_weight_bitsandbytes_repacked_for_its_cpu_kernel_stays_its_own has that branch); switched off here,
    so that these tests take the layout a GPU has on every machine."""
    from bitsandbytes.nn import Linear4bit

    for m in model.modules():
        if type(m) is Linear4bit:
            m.support_avx512bf16_for_cpu = False


@pytest.fixture(scope="module")
def nf4():
    return _load(WIDE)


def _state(model) -> dict:
    """Every bitsandbytes weight's bytes and quant-state tensors, copied."""
    from bitsandbytes.nn import Linear4bit

    out = {}
    for name, m in model.named_modules():
        if type(m) is Linear4bit:
            s = m.weight.quant_state
            out[name] = [m.weight.data.clone(), s.absmax.clone()] + (
                [s.state2.absmax.clone(), s.offset.clone()] if s.nested else [])
    return out


def _logits(model, ids):
    import torch

    with torch.no_grad():
        return model(input_ids=ids).logits.float()


def test_packed_and_fused_give_bitsandbytes_products_on_its_own_bytes_and_restore_them(nf4) -> None:
    import torch
    from bitsandbytes.nn import Linear4bit

    from gemma_run.infer.engine import Decoder, fused_projections, packed_4bit
    from gemma_run.infer.engine.fused_linear import FusedPacked4Linear, PartLinear

    model = copy.deepcopy(nf4.model)
    before = _state(model)
    assert len(before) == 7 * model.config.num_hidden_layers  # every projection of every layer is NF4
    assert all(t.dtype == torch.uint8 for t in (v[1] for v in before.values()))  # double quant: absmax as codes
    ids = torch.tensor([nf4.tokenizer("the cat sat on the mat")["input_ids"]])
    want = _logits(model, ids)
    pointers = {n: m.weight.data.data_ptr() for n, m in model.named_modules() if type(m) is Linear4bit}

    decoder = Decoder.of(model)
    assert decoder.pack_4bit() == len(before) and decoder.pack_4bit() == len(before)  # once
    packed = {n: m for n, m in model.named_modules() if type(m) is packed_4bit.Packed4Linear}
    assert set(packed) == set(before)
    assert all(m.packed.qweight.data_ptr() == pointers[n] for n, m in packed.items())  # the same storage
    assert torch.allclose(_logits(model, ids), want, rtol=1e-4, atol=1e-4)

    assert decoder.fuse() == 2 * model.config.num_hidden_layers
    attn = model.model.layers[0].self_attn
    assert type(attn.q_proj) is PartLinear and type(attn.q_proj._fused[0]) is FusedPacked4Linear
    assert torch.allclose(_logits(model, ids), want, rtol=1e-4, atol=1e-4)

    decoder.restore()
    assert fused_projections.count(model) == 0 and packed_4bit.count(model) == 0
    after = _state(model)
    assert after.keys() == before.keys()
    for name in before:  # the bitsandbytes modules as loaded: bytes, absmax codes, their scales and offsets
        assert all(torch.equal(a, b) for a, b in zip(after[name], before[name], strict=True)), name
    assert torch.equal(_logits(model, ids), want)


def test_siblings_whose_absmax_blocks_straddle_are_not_stacked() -> None:
    """tiny_gemma3 as it is: k/v's 32 rows of one block each hold 32 absmax codes, less than one block of 256
    scales, so q/k/v cannot be stacked on their storage; they stay apart, each under the kernel."""
    import torch

    from gemma_run.infer.engine import Decoder, packed_4bit

    loaded = _load([])
    decoder = Decoder.of(loaded.model)
    assert decoder.pack_4bit() == 7 * 2 and decoder.fuse() == 0
    ids = torch.tensor([[2, 5, 9, 11]])
    assert type(loaded.model.model.layers[0].self_attn.k_proj) is packed_4bit.Packed4Linear
    assert _logits(loaded.model, ids).isfinite().all()
    decoder.restore()


def test_a_weight_bitsandbytes_repacked_for_its_cpu_kernel_stays_its_own() -> None:
    """The AVX512-BF16 CPU branch, on any machine: a weight bitsandbytes has repacked (its own conversion, plain
    torch) is another layout, so the engine leaves that module to bitsandbytes and packs the others."""
    import torch
    from bitsandbytes.functional import _convert_weight_packed_for_cpu

    from gemma_run.infer.engine import Decoder, packed_4bit
    from gemma_run.kernels import gemv4

    model = _load(WIDE).model
    mlp = model.model.layers[0].mlp
    with torch.no_grad():
        mlp.down_proj.weight.data, mlp.down_proj.weight.quant_state = _convert_weight_packed_for_cpu(
            mlp.down_proj.weight.data, mlp.down_proj.weight.quant_state)
    repacked = mlp.down_proj
    data = repacked.weight.data.clone()
    assert not packed_4bit.packable(repacked) and packed_4bit.packable(mlp.up_proj)
    with pytest.raises(ValueError, match="AVX512-BF16"):
        gemv4.from_bitsandbytes(repacked.weight)
    decoder = Decoder.of(model)
    assert decoder.pack_4bit() == 7 * model.config.num_hidden_layers - 1
    assert mlp.down_proj is repacked and torch.equal(repacked.weight.data, data)  # untouched
    assert type(mlp.up_proj) is packed_4bit.Packed4Linear
    decoder.restore()


def test_fast_engine_on_the_4bit_kernel_gives_generates_tokens_and_stops_as_it_does() -> None:
    """On tiny_gemma3 as it is (its greedy rows vary enough to find an EOS mid-run; the wider model's repeat one
    token): the engine's 32 greedy tokens equal generate()'s on bitsandbytes' modules, and it stops as it does."""
    from helpers.decode import check_greedy_and_stopping

    from gemma_run.infer.engine import Decoder, EngineOptions, packed_4bit

    loaded = _load([])
    engine = EngineOptions("fast", False, True, "test", fuse=True, kernel_4bit="gemv4")
    check_greedy_and_stopping(loaded, engine)
    assert packed_4bit.count(loaded.model) == 7 * 2
    Decoder.of(loaded.model).restore()


def test_the_kernel_is_chosen_where_it_runs_and_named(nf4, compose_cfg) -> None:
    from gemma_run.infer.engine import choose_engine
    from gemma_run.infer.engine.options import kernel_4bit

    g = compose_cfg().generation
    assert kernel_4bit(g, nf4.model) == "bitsandbytes"  # the default
    g.kernel_4bit = "gemv4"
    assert kernel_4bit(g, nf4.model) == "gemv4"  # asked for: the kernel's reference path on the CPU
    g.compile = False
    g.engine = "fast"
    engine = choose_engine(g, nf4.model)
    assert engine.kernel_4bit == "gemv4" and "gemma-run 4-bit kernel" in engine.describe()


def test_gemv4_on_a_gpu_without_triton_is_refused_naming_the_key(nf4, compose_cfg, monkeypatch) -> None:
    """The branch a CUDA machine without Triton takes: one error naming the key and the fix, before any surgery."""
    from types import SimpleNamespace

    from gemma_run.app.errors import GemmaRunError
    from gemma_run.infer.engine.options import kernel_4bit
    from gemma_run.kernels import gemv4

    on_gpu = SimpleNamespace(modules=nf4.model.modules,
                             parameters=lambda: iter([SimpleNamespace(device=SimpleNamespace(type="cuda"))]))
    monkeypatch.setattr(gemv4, "triton_available", lambda: False)
    g = compose_cfg(["generation.kernel_4bit=gemv4"]).generation
    with pytest.raises(GemmaRunError, match="needs Triton") as err:
        kernel_4bit(g, on_gpu)
    assert err.value.key == "generation.kernel_4bit" and "generation.kernel_4bit=bitsandbytes" in err.value.fix
    monkeypatch.setattr(gemv4, "triton_available", lambda: True)
    assert kernel_4bit(g, on_gpu) == "gemv4"


def test_a_model_without_nf4_weights_keeps_its_kernels(compose_cfg) -> None:
    from gemma_run.infer.engine.options import kernel_4bit
    from gemma_run.loading import load

    loaded = load(compose_cfg(["device_map=cpu"]))
    g = compose_cfg(["generation.kernel_4bit=gemv4"]).generation
    assert kernel_4bit(g, loaded.model) == "bitsandbytes"
