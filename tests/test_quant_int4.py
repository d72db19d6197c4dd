"""quant=int4 (torchao int4 weight-only): loads and generates through the loading path on CPU, quantizes every
Linear but lm_head, refuses a group size that does not divide a Linear and a missing torchao, and the planner's
bytes equal what torchao really holds.

GPU (the tile_packed_to_4d layout, with its padding; Gemma 3 4B's real width with two layers, helpers.shapes):
    GEMMA_RUN_TEST_CACHE=/tmp/gr-cache python -m pytest tests/test_quant_int4.py -m gpu -s -q
"""

from __future__ import annotations

import sys

import pytest
from helpers.run_if import RunIf
from helpers.shapes import GEMMA3_4B
from omegaconf import OmegaConf

from gemma_run.app.errors import GemmaRunError
from gemma_run.planning import memory, params, skeleton
from gemma_run.quant import from_cfg
from gemma_run.quant.torchao import TorchAoInt4

INT4 = ["quant=int4", "quant.group_size=64"]  # the tiny model's Linears take 64 or 128 inputs


def _real_bytes(model) -> int:
    """What the model holds, inner tensors of torchao's weights included, rounded as the planner rounds."""
    total, seen = 0, set()
    for _, t in [*model.named_parameters(), *model.named_buffers()]:
        if id(t) in seen:
            continue
        seen.add(id(t))
        if hasattr(type(t), "__tensor_flatten__"):
            names, _ = t.__tensor_flatten__()
            total += sum(memory.rounded(getattr(t, n).numel() * getattr(t, n).element_size()) for n in names)
        else:
            total += memory.rounded(t.numel() * t.element_size())
    return total


def _planned(cfg, on_gpu: bool) -> tuple[int, set[str]]:
    q = cfg.quant
    spec = from_cfg(q).planner_quant(on_gpu)
    sk = skeleton.build(OmegaConf.to_container(cfg.model.config), True)
    quantized = memory.quantized_modules(sk, spec)
    dtype = "bfloat16" if on_gpu else str(cfg.model.dtype)
    return sum(memory.unit_bytes(u, spec, quantized, dtype) for u in params.units(sk)), quantized


def _int4_modules(model) -> set[str]:
    return {n for n, m in model.named_modules()
            if hasattr(m, "weight") and type(m.weight).__name__.startswith("Int4")}


@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
def test_int4_loads_generates_and_matches_the_plan_on_cpu(compose_cfg, dtype: str) -> None:
    import torch

    from gemma_run.loading import load

    cfg = compose_cfg([*INT4, "device_map=cpu", f"model.dtype={dtype}"])
    loaded = load(cfg)
    model = loaded.model
    assert type(model.model.layers[0].mlp.down_proj.weight).__name__ == "Int4OpaqueTensor"
    assert model.lm_head.weight.dtype == getattr(torch, dtype)  # the output layer stays unquantized
    assert type(model.hf_quantizer).__name__ == "TorchAoHfQuantizer"
    planned, quantized = _planned(cfg, on_gpu=False)
    assert quantized == _int4_modules(model) and len(quantized) == 14  # 7 Linears a layer, 2 layers
    assert planned == _real_bytes(model)
    assert sum(loaded.bytes_per_device.values()) < _real_bytes(compose_and_load_bf16(compose_cfg, dtype))
    ids = loaded.tokenizer("Hello there", return_tensors="pt")
    out = model.generate(**ids, max_new_tokens=6, do_sample=False)
    assert out.shape[1] == ids["input_ids"].shape[1] + 6


def compose_and_load_bf16(compose_cfg, dtype: str):
    from gemma_run.loading import load

    return load(compose_cfg(["quant=none", "device_map=cpu", f"model.dtype={dtype}"])).model


def test_int4_weights_and_logits_stay_close_to_the_unquantized_model(compose_cfg) -> None:
    """Same random weights, quantized: each Linear's int4 weight (read back through its own kernel) is within
    12% of the fp32 weight (16 levels per group of 64 on Gaussian weights: ~9%, as bitsandbytes' nf4 gets on
    the same model), and the logits within 35% (nf4: 25%)."""
    import torch

    from gemma_run.loading import load

    ref = load(compose_cfg(["quant=none", "device_map=cpu", "model.dtype=float32"])).model
    q = load(compose_cfg([*INT4, "device_map=cpu", "model.dtype=float32"]))
    modules = dict(ref.named_modules())
    with torch.no_grad():
        for name in _int4_modules(q.model):
            lin = q.model.get_submodule(name)
            w = modules[name].weight
            read = lin(torch.eye(lin.in_features)).t()  # the kernel applied to the identity: W as it computes it
            assert float((read - w).norm() / w.norm()) < 0.12, name
        ids = q.tokenizer("The quick brown fox jumps over the lazy dog", return_tensors="pt")
        a, b = ref(**ids).logits, q.model(**ids).logits
    assert float((a - b).norm() / a.norm()) < 0.35


def test_group_size_that_does_not_divide_a_linear_is_refused_before_loading(compose_cfg) -> None:
    from gemma_run.loading import load

    with pytest.raises(GemmaRunError) as e:
        load(compose_cfg(["quant=int4", "device_map=cpu"]))  # 128 does not divide hidden 64
    assert e.value.key == "quant.group_size"
    assert "model.layers.0.self_attn.q_proj" in str(e.value) and "quant.group_size=64" in str(e.value)


def test_missing_torchao_says_how_to_install_it(compose_cfg, monkeypatch) -> None:
    from gemma_run.loading import load

    monkeypatch.setitem(sys.modules, "torchao.quantization", None)  # import fails as if not installed
    with pytest.raises(GemmaRunError) as e:
        load(compose_cfg([*INT4, "device_map=cpu"]))
    assert "torchao==0.18.0" in str(e.value) and e.value.key == "quant"


def test_bad_torchao_keys_fail_validation(compose_cfg) -> None:
    from gemma_run.app.validation import validate

    problems = validate(compose_cfg(["quant=int4", "quant.group_size=100", "quant.packing_format=marlin"]))
    keys = {p.key for p in problems}
    assert {"quant.group_size", "quant.packing_format"} <= keys


def test_packing_follows_the_device(compose_cfg) -> None:
    from gemma_run.quant import torchao as torchao_int4

    q = compose_cfg(["quant=int4"]).quant
    assert torchao_int4.packing(q, on_cuda=True) == "tile_packed_to_4d"
    assert torchao_int4.packing(q, on_cuda=False) == "opaque"
    q.packing_format = "tile_packed_to_4d"
    with pytest.raises(GemmaRunError, match="CUDA only"):
        torchao_int4.packing(q, on_cuda=False)
    with pytest.raises(GemmaRunError) as e:
        torchao_int4.build(compose_cfg(["quant=int4"]).quant, on_cuda=True, dtype="float32")
    assert e.value.key == "model.dtype"


def test_cuda_layout_pads_in_features_to_1024() -> None:
    """Int4TilePackedTo4dTensor pads (out, in) to multiples of (8, 1024) and keeps the padding: Gemma 3 27B's
    q_proj (4096 x 5376) is stored as 4096 x 6144 int4 + 48 groups x 4096 rows x (scale, zero) in bf16."""
    q = memory.Quant("int4", group_size=128)
    assert TorchAoInt4.planned_weight_bytes((4096, 5376), q, "bfloat16") == 4096 * 6144 // 2 + 48 * 4096 * 2 * 2
    cpu = memory.Quant("int4", group_size=128, padded=False)
    assert TorchAoInt4.planned_weight_bytes((4096, 5376), cpu, "bfloat16") == 4096 * 5376 // 2 + 42 * 4096 * 2 * 2


def test_projections_the_fast_engine_stacks_are_counted_without_torchaos_padding() -> None:
    """Stacked (q/k/v, gate/up): in_features padded to 128 only; the others keep torchao's 1024 (1B's down_proj:
    6912 -> 7168)."""
    stacked = memory.Quant("int4", group_size=128, stacked=True)
    q_proj = TorchAoInt4.planned_weight_bytes((4096, 5376), stacked, "bfloat16", "model.layers.0.self_attn.q_proj")
    assert q_proj == 4096 * 5376 // 2 + 42 * 4096 * 2 * 2
    down = TorchAoInt4.planned_weight_bytes((1152, 6912), stacked, "bfloat16", "model.layers.0.mlp.down_proj")
    assert down == 1152 * 7168 // 2 + 56 * 1152 * 2 * 2


def test_plan_of_27b_int4_sits_between_nf4_and_int8(compose_cfg) -> None:
    from gemma_run.planning import inputs
    from gemma_run.planning.plan import make_plan

    p, _ = inputs.from_cfg(compose_cfg(["model=gemma3_27b", "quant=int4", "plan.gpus=[80GiB]"]), "infer")
    plan = make_plan(p)
    table = plan["weights_bytes_by_dtype"]
    assert table["nf4+double_quant"] < plan["weights_bytes"] == table["int4"] < table["int8"]
    assert plan["quant"] == "int4" and plan["quantized_modules"] == 62 * 7 and plan["fits"]


@RunIf(gpus=1, torchao=True)
def test_gpu_random_4b_int4_in_memory_loads_generates_and_matches_the_plan(compose_cfg) -> None:
    import time

    import torch

    from gemma_run.loading import load

    cfg = compose_cfg([*GEMMA3_4B, "model.random_storage=memory", "quant=int4", "device_map=auto"])
    start = time.perf_counter()
    loaded = load(cfg)
    model = loaded.model
    assert type(model.model.layers[0].mlp.down_proj.weight).__name__ == "Int4TilePackedTo4dTensor"
    planned, quantized = _planned(cfg, on_gpu=True)
    assert quantized == _int4_modules(model)
    real = _real_bytes(model)
    print(f"\n4b (2 layers) int4 memory: load {time.perf_counter() - start:.1f} s, planned {planned / 2**30:.3f} GiB, "
          f"real {real / 2**30:.3f} GiB, per device {loaded.bytes_per_device}")
    assert planned == real
    ids = loaded.tokenizer("Hello there, how are", return_tensors="pt").to(loaded.input_device)
    out = model.generate(**ids, max_new_tokens=16, do_sample=False)
    assert out.shape[1] == ids["input_ids"].shape[1] + 16
    assert set(loaded.bytes_per_device) == {"cuda:0"}
    del loaded, model
    torch.cuda.empty_cache()


def test_doctor_check_reads_int4_weights_back_on_this_device() -> None:
    from gemma_run.doctor.quant import int4_check

    finding = int4_check(None)
    assert finding.status == "pass", finding
    assert finding.details["layout"] in ("Int4OpaqueTensor", "Int4TilePackedTo4dTensor")
    assert 0.02 < finding.details["weight_error"] < 0.15  # quantized (not a copy), and close


def test_training_refuses_int4_naming_the_qlora_format(compose_cfg) -> None:
    from gemma_run.app.validation import validate

    problems = validate(compose_cfg(["task=train", "quant=int4", "data.train_file=x.jsonl"]))
    assert any(e.key == "quant" and "quant=4bit" in e.fix for e in problems)


def test_lm_head_int4_quantizes_the_output_layer_keeps_the_table_and_matches_the_plan(compose_cfg) -> None:
    """quant.lm_head=int4: the (tied) output layer is int4 after loading, the input embedding's table is still
    the model's, the logits stay close to the bf16 output's (10% here), and the plan counts the int4 copy on top
    of the table, which a decode step then does not read."""
    import torch

    from gemma_run.loading import load
    from gemma_run.planning import inputs
    from gemma_run.planning.plan import make_plan

    base = [*INT4, "device_map=cpu", "model.dtype=float32"]
    keep = load(compose_cfg(base)).model
    cfg = compose_cfg([*base, "quant.lm_head=int4"])
    loaded = load(cfg)
    model = loaded.model
    assert type(model.lm_head.weight).__name__ == "Int4OpaqueTensor"
    table = model.get_input_embeddings().weight
    assert type(table) is torch.nn.Parameter and torch.equal(table, keep.get_input_embeddings().weight)
    ids = loaded.tokenizer("The quick brown fox jumps over the lazy dog", return_tensors="pt")
    with torch.no_grad():
        a, b = keep(**ids).logits, model(**ids).logits
    assert 0 < float((a - b).norm() / a.norm()) < 0.2
    plan = make_plan(inputs.from_cfg(cfg, "infer")[0])
    assert plan["weights_bytes"] == _real_bytes(model) and plan["quantized_modules"] == 15
    assert plan["decode_unread_bytes"] == memory.rounded(table.numel() * 4)


def test_lm_head_int4_is_quant_int4s_option(compose_cfg) -> None:
    from gemma_run.app.validation import validate

    for overrides in (["quant=4bit", "quant.lm_head=int4"], ["quant=int4", "quant.lm_head=int8"]):
        assert [e.key for e in validate(compose_cfg(overrides))] == ["quant.lm_head"], overrides


def test_lm_head_int4_on_cuda_is_quantized_in_row_chunks_then_stacked(compose_cfg, monkeypatch) -> None:
    """On CUDA the output layer is quantized HEAD_CHUNK_ROWS rows at a time (torchao's transients for 27B's whole
    output would be ~16 GB) and the chunks stacked into one module, rows in order, bias included. torchao's CUDA
    layout cannot be built on a CPU, so quantize_ is replaced by one that packs each tile of 8 rows with the
    index of its first row, and each row's scale with its own index: where they land is what is checked."""
    import torch
    import torchao.quantization as tq
    from torchao.quantization import Int4TilePackedTo4dTensor

    from gemma_run.quant import torchao as torchao_int4

    def fake_quantize(linear, config) -> None:
        w = linear.weight.detach()  # row i holds the value i
        n, k = w.shape
        qdata = w[::8, :1].to(torch.int32).view(n // 8, 1, 1, 1).expand(n // 8, 1024 // 128, 32, 4).contiguous()
        sz = w[:, :1].view(1, n, 1).expand(1024 // 64, n, 2).contiguous()
        linear.weight = torch.nn.Parameter(Int4TilePackedTo4dTensor(qdata, sz, [1, 64], torch.Size([n, k])),
                                           requires_grad=False)

    class Model(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lm_head = torch.nn.Linear(128, 40, dtype=torch.bfloat16)
            with torch.no_grad():
                self.lm_head.weight.copy_(torch.arange(40.0).view(40, 1).expand(40, 128))
                self.lm_head.bias.copy_(torch.arange(40.0))

        def get_output_embeddings(self):
            return self.lm_head

        def set_output_embeddings(self, module) -> None:
            self.lm_head = module

    monkeypatch.setattr(tq, "quantize_", fake_quantize)
    monkeypatch.setattr(torchao_int4, "HEAD_CHUNK_ROWS", 16)
    model = Model()
    torchao_int4.quantize_output_layer(model, compose_cfg([*INT4]).quant, on_cuda=True)
    head = model.lm_head
    assert type(head).__name__ == "FusedInt4Linear" and head.sizes == [16, 16, 8] and head.k_stored == 128
    assert head.qdata[:, :, 0, 0].tolist() == [[t * 8] for t in range(5)]  # 128 inputs: one K tile, not 8
    assert head.scale_and_zero[0, :, 0].tolist() == list(range(40)) and tuple(head.scale_and_zero.shape) == (2, 40, 2)
    assert head.bias.tolist() == list(range(40))
