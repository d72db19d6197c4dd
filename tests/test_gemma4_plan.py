"""Gemma 4 in the planner: parameter counts of every published config (total, effective, MoE active), per-layer KV
shapes and shared-KV layers against a hand count and a real transformers cache, LoRA on expert tensors against
peft, the bandwidth limit's expert share, the tensor-parallel refusal, and task=plan end to end."""

from __future__ import annotations

import json

import pytest
from helpers.runs import run_dirs
from omegaconf import OmegaConf

from gemma_run.planning import kv, params, skeleton, training
from gemma_run.planning.training import TrainSpec

B = 1e9


def model_config(name: str) -> dict:
    from importlib import resources

    text = resources.files("gemma_run.conf").joinpath(f"model/{name}.yaml").read_text()
    return OmegaConf.to_container(OmegaConf.create(text).config)


def counts(name: str, text_only: bool) -> dict[str, int]:
    return params.by_component(params.units(skeleton.build(model_config(name), text_only)))


# The model cards' sizes: E2B "2.3B effective, 5.1B with embeddings", E4B "4.5B effective, 8B with embeddings",
# 31B "30.7B", 26B-A4B "25.2B total, 3.8B active", 12B "11.95B". Effective: the language model without its
# per-layer embedding tables (the vision and audio encoders left out too).
@pytest.mark.parametrize(("name", "total", "effective"), [
    ("gemma4_e2b", (5.0, 5.2), (2.2, 2.4)),
    ("gemma4_e4b", (7.8, 8.1), (4.4, 4.7)),
    ("gemma4_31b", (30.6, 31.4), (30.6, 30.8)),
    ("gemma4_26b_a4b", (25.1, 25.9), (25.1, 25.3)),
    ("gemma4_12b", (11.9, 12.0), (11.85, 11.95)),
])
def test_parameter_counts_match_the_model_cards(name: str, total: tuple, effective: tuple) -> None:
    full, text = counts(name, text_only=False), counts(name, text_only=True)
    assert total[0] * B <= full["total"] <= total[1] * B
    assert effective[0] * B <= text["total"] - text.get("per_layer_embeddings", 0) <= effective[1] * B
    assert "lm_head" not in text  # tied: counted once, with the embedding
    if name in ("gemma4_e2b", "gemma4_e4b"):  # the cards: ~150M vision, ~300M audio encoder
        assert 0.14 * B <= full["vision_tower"] <= 0.18 * B and 0.29 * B <= full["audio_tower"] <= 0.32 * B
    if name in ("gemma4_31b", "gemma4_26b_a4b"):  # ~550M vision encoder
        assert 0.54 * B <= full["vision_tower"] <= 0.58 * B and "audio_tower" not in full


@pytest.mark.parametrize("name", ["gemma4_e2b", "gemma4_e4b", "gemma4_31b", "gemma4_26b_a4b", "gemma4_12b"])
@pytest.mark.parametrize("text_only", [True, False])
def test_planner_count_is_the_transformers_models(name: str, text_only: bool) -> None:
    model = skeleton.build(model_config(name), text_only)
    assert counts(name, text_only)["total"] == sum(p.numel() for p in model.parameters())


def test_per_layer_embeddings_are_their_own_component_and_unread_by_decode() -> None:
    from gemma_run.planning.plan import make_plan

    text = counts("gemma4_e2b", text_only=True)
    assert text["per_layer_embeddings"] == 262_144 * 35 * 256  # vocab_size_per_layer_input x layers x width
    plan = make_plan(_inputs("gemma4_e2b"))
    assert plan["decode_unread_bytes"] == 2 * text["per_layer_embeddings"]  # bf16, one row a step is all it reads
    assert plan["kv_shared_layers"] == 20


def test_moe_active_parameters_per_token() -> None:
    model = skeleton.build(model_config("gemma4_26b_a4b"), True)
    moe = params.moe_of(skeleton.text_config(model))
    assert (moe.experts, moe.top_k) == (128, 8)
    units = params.units(model)
    experts = sum(t.numel for t in params.expert_tensors(units))
    assert experts == 30 * 128 * 3 * 704 * 2816  # gate_up (2 x 704) + down (704), per expert and layer
    active = params.active_params(units, moe)
    assert 3.7 * B <= active <= 3.9 * B  # the card's "3.8B active"
    assert active == sum(u.params for u in units) - experts * 120 // 128
    assert moe.read_fraction(1) == 8 / 128 and moe.read_fraction(64) > 0.98
    assert params.active_params(units, None) == sum(u.params for u in units)


def test_kv_bytes_of_31b_by_hand() -> None:
    """50 sliding layers: 16 KV heads x 256, at most 1024 tokens; 10 global: 4 KV heads x 512 (k_eq_v: K and V
    are both cached), the whole context. bf16, batch 2, 8192 tokens."""
    shape = kv.shape_of(skeleton.text_config(skeleton.build(model_config("gemma4_31b"), True)))
    sliding = 50 * 2 * 2 * 16 * 256 * 1024 * 2
    full = 10 * 2 * 2 * 4 * 512 * 8192 * 2
    assert kv.kv_bytes(shape, 8192, 2, 2) == sliding + full


def test_kv_bytes_of_e2b_by_hand() -> None:
    """35 layers, 4 sliding + 1 global; the last 20 share the KV of earlier layers and keep none: layers 0-14 hold
    12 sliding (1 KV head x 256, window 512) and 3 global (1 x 512) caches."""
    shape = kv.shape_of(skeleton.text_config(skeleton.build(model_config("gemma4_e2b"), True)))
    assert [kv.kv_layer_bytes(shape, i, 4096, 1, 2) for i in range(15, 35)] == [0] * 20
    assert kv.kv_bytes(shape, 4096, 1, 2) == 12 * 2 * 256 * 512 * 2 + 3 * 2 * 512 * 4096 * 2


TINY = {"model_type": "gemma4_text", "vocab_size": 512, "vocab_size_per_layer_input": 512, "hidden_size": 64,
        "hidden_size_per_layer_input": 8, "intermediate_size": 128, "num_hidden_layers": 6,
        "num_attention_heads": 4, "num_key_value_heads": 2, "num_global_key_value_heads": 1, "head_dim": 16,
        "global_head_dim": 32, "attention_k_eq_v": True, "num_kv_shared_layers": 2,
        "layer_types": ["sliding_attention", "full_attention"] * 3, "sliding_window": 8,
        "max_position_embeddings": 512, "enable_moe_block": True, "num_experts": 4, "top_k_experts": 2,
        "moe_intermediate_size": 32}


def _tiny_model():
    import torch
    from transformers import AutoModelForCausalLM

    from gemma_run.loading.random_weights import architecture_config

    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(architecture_config(TINY, True), dtype=torch.float32).eval()


def test_kv_bytes_equal_a_real_cache() -> None:
    """What transformers' DynamicCache holds after a forward, layer by layer: global layers exactly (K and V both,
    their own head count and dim), shared layers nothing, sliding layers at most the planned window (transformers
    keeps window - 1 tokens: the plan counts one token more per sliding layer)."""
    import torch
    from transformers import DynamicCache

    model = _tiny_model()
    shape = kv.shape_of(skeleton.text_config(skeleton.build(TINY, True, "float32")))
    for tokens in (5, 20):
        cache = DynamicCache(config=model.config)
        with torch.no_grad():
            model(torch.randint(3, 500, (2, tokens)), past_key_values=cache, use_cache=True)
        for i, layer in enumerate(cache.layers):
            held = sum(t.numel() * t.element_size() for t in (getattr(layer, "keys", None),
                                                              getattr(layer, "values", None))
                       if isinstance(t, torch.Tensor))
            planned = kv.kv_layer_bytes(shape, i, tokens, 2, 4)
            if shape.layer_types[i] == "sliding_attention" and tokens > shape.sliding_window:
                assert held == planned * (shape.sliding_window - 1) // shape.sliding_window
            else:
                assert held == planned, (i, tokens)


def test_lora_on_expert_tensors_matches_peft() -> None:
    from peft import LoraConfig, get_peft_model

    spec = TrainSpec(lora_r=4, target_parameters=("experts.gate_up_proj", "experts.down_proj"))
    sk = skeleton.build(TINY, True, "float32")
    planned = sum(training.lora_params_by_unit(sk, params.units(sk), spec).values())
    peft_model = get_peft_model(_tiny_model(), LoraConfig(r=4, target_modules=list(spec.target_modules),
                                                          target_parameters=list(spec.target_parameters)))
    assert planned == sum(p.numel() for p in peft_model.parameters() if p.requires_grad)


def _inputs(name: str, **changes):
    from gemma_run.planning.memory import Quant
    from gemma_run.planning.plan import PlanInputs

    base = dict(config=model_config(name), text_only=True, mode="infer", dtype="bfloat16", quant=Quant(),
                gpus=(80 * 2**30,), cpu_budget=64 * 2**30, strategy="auto", batch=1, prompt=128, new_tokens=64)
    base.update(changes)
    return PlanInputs(**base)


def test_bench_limit_reads_only_the_routed_experts(compose_cfg) -> None:
    from gemma_run.bench.limit import decode_step_bytes
    from gemma_run.planning.plan import make_plan

    cfg = compose_cfg(["model=gemma4_26b_a4b", "plan.gpus=[80GiB]"])
    plan = make_plan(_inputs("gemma4_26b_a4b"))
    one = decode_step_bytes(cfg, "bfloat16", prompt=16, new=8, batch=1)
    assert one["weights_bytes"] == plan["weights_bytes"] - round(plan["expert_bytes"] * 120 / 128)
    many = decode_step_bytes(cfg, "bfloat16", prompt=16, new=8, batch=64)
    assert one["weights_bytes"] < many["weights_bytes"] < plan["weights_bytes"]


def test_tp_over_more_ranks_than_the_global_kv_heads_is_refused(compose_cfg) -> None:
    from gemma_run.app.validation import validate

    cfg = compose_cfg(["model=gemma4_31b", "device_map=tp", "launcher=torchrun", "launcher.nproc_per_node=8"])
    found = {p.key: p.format() for p in validate(cfg)}
    assert "num_global_key_value_heads=4, not divisible by 8" in found["launcher.nproc_per_node"]
    assert "fix:" in found["launcher.nproc_per_node"]
    cfg = compose_cfg(["model=gemma4_31b", "device_map=tp", "launcher=torchrun", "launcher.nproc_per_node=4"])
    assert "launcher.nproc_per_node" not in {p.key for p in validate(cfg)}


@pytest.mark.slow
@pytest.mark.parametrize(("args", "total", "expect"), [
    (["model=gemma4_31b", "quant=int4", "plan.gpus=[80GiB]"], 30_697_345_280, "fits: yes"),
    (["model=gemma4_26b_a4b", "plan.gpus=[80GiB]"], 25_233_141_760, "active per token"),
])
def test_cli_plan_of_gemma4(cli, tmp_path, args: list[str], total: int, expect: str) -> None:
    out = cli("task=plan", *args)
    assert out.returncode == 0, out.stderr
    assert expect in out.stdout
    result = json.loads((run_dirs(tmp_path)[-1] / "result.json").read_text())
    assert result["params"]["total"] == total and result["fits"] is True


def test_training_flops_count_the_routed_experts_and_each_layers_head_dim() -> None:
    from torch import nn

    from gemma_run.training import flops

    moe = flops.per_token(model_config("gemma4_26b_a4b"), True, 2048, lora=True, lora_params=0)
    model = skeleton.build(model_config("gemma4_26b_a4b"), True)
    linear = sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Linear))
    experts = sum(t.numel for t in params.expert_tensors(params.units(model)))
    assert moe["matmul_params"] == linear + experts * 8 // 128  # + the 8 of 128 experts a token is routed to
    dense = flops.per_token(model_config("gemma4_31b"), True, 2048, lora=True, lora_params=0)
    sliding = 50 * 4 * 32 * 256 * flops._mean_context(2048, 1024)
    full = 10 * 4 * 32 * 512 * (2048 + 1) / 2
    assert dense["attention_flops_per_token"] == int(3 * (sliding + full))
