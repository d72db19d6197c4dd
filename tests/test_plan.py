"""task=plan and the planner: counts against published totals, bytes against a real bitsandbytes model,
KV cache with sliding layers, placement, training state, suggestions, bad input, and the preflight refusal."""

from __future__ import annotations

import json

import pytest
from helpers.runs import run_dirs
from omegaconf import OmegaConf

from gemma_run.planning import devices, kv, memory, params, skeleton, training
from gemma_run.planning.memory import Quant
from gemma_run.planning.plan import PlanInputs, make_plan, with_changes
from gemma_run.planning.suggest import suggest
from gemma_run.planning.training import TrainSpec
from gemma_run.quant import from_cfg

GiB = 2**30


def model_config(name: str) -> dict:
    from importlib import resources

    text = resources.files("gemma_run.conf").joinpath(f"model/{name}.yaml").read_text()
    return OmegaConf.to_container(OmegaConf.create(text).config)


# Published parameter counts (the model cards / safetensors metadata of each checkpoint).
@pytest.mark.parametrize(("name", "text_only", "total"), [
    ("gemma3_1b", True, 999_885_952),
    ("gemma3_4b", False, 4_300_079_472),
    ("gemma3_27b", False, 27_432_406_640),
    ("gemma2_9b", True, 9_241_705_984),
    ("gpt2_xl", True, 1_557_611_200),
])
def test_parameter_counts_match_the_published_models(name: str, text_only: bool, total: int) -> None:
    counts = params.by_component(params.units(skeleton.build(model_config(name), text_only)))
    assert counts["total"] == total
    assert counts["total"] == sum(v for k, v in counts.items() if k != "total")
    if not text_only and name.startswith("gemma3"):
        assert counts["vision_tower"] == 416_866_032  # SigLIP so400m without its head
    assert "lm_head" not in counts  # tied: counted once, with the embedding


@pytest.mark.parametrize("quant", ["none", "8bit", "4bit", "fp4"])
def test_weight_bytes_equal_a_real_bitsandbytes_model(compose_cfg, quant: str) -> None:
    """Load the tiny model through the loading path, quantized on CPU, and count what bitsandbytes holds."""
    from gemma_run.loading import load

    cfg = compose_cfg([f"quant={quant}", "device_map=cpu", "model.dtype=bfloat16"])
    model = load(cfg).model
    real, seen = 0, set()
    for _, t in [*model.named_parameters(), *model.named_buffers()]:
        if id(t) in seen:
            continue
        seen.add(id(t))
        real += memory.rounded(t.numel() * t.element_size())
        qs = getattr(t, "quant_state", None)
        if qs is not None:
            real += memory.rounded(qs.absmax.numel() * qs.absmax.element_size()) + memory.rounded(qs.code.numel() * 4)
            if qs.nested:
                real += memory.rounded(qs.state2.absmax.numel() * 4) + memory.rounded(qs.state2.code.numel() * 4) + 512
        if getattr(t, "SCB", None) is not None:
            real += memory.rounded(t.SCB.numel() * 4)
    q = cfg.quant
    spec = from_cfg(q).planner_quant()
    sk = skeleton.build(OmegaConf.to_container(cfg.model.config), True)
    quantized = memory.quantized_modules(sk, spec)
    planned = sum(memory.unit_bytes(u, spec, quantized, "bfloat16") for u in params.units(sk))
    assert planned == real
    from bitsandbytes.nn import Linear4bit, Linear8bitLt

    real_quantized = {n for n, m in model.named_modules() if isinstance(m, Linear4bit | Linear8bitLt)}
    assert quantized == real_quantized  # transformers' own skip list: lm_head/embeddings stay bf16


def test_four_bit_is_about_a_quarter_of_bf16_plus_the_unquantized_embedding() -> None:
    model = skeleton.build(model_config("gemma3_27b"), True)
    table = memory.dtype_table(params.units(model), model)
    emb = 262208 * 5376 * 2
    linear_bf16 = table["bfloat16"] - emb
    assert table["nf4+double_quant"] - emb == pytest.approx(linear_bf16 * (0.5 + 1 / 64 + 4 / 64 / 256) / 2, rel=0.01)
    assert table["nf4"] > table["nf4+double_quant"] and table["int8"] < table["bfloat16"]


def test_kv_cache_honours_sliding_layers() -> None:
    shape = kv.shape_of(skeleton.text_config(skeleton.build(model_config("gemma3_4b"), True)))
    assert shape.layer_types.count("full_attention") == 5 and shape.sliding_window == 1024
    per_token = 2 * 4 * 256 * 2  # K and V, 4 KV heads x 256, bf16
    assert kv.kv_bytes(shape, 32768, 1, 2) == per_token * (5 * 32768 + 29 * 1024)
    assert kv.kv_bytes(shape, 512, 2, 2) == 2 * per_token * 34 * 512  # under the window every layer holds all
    g2 = kv.shape_of(skeleton.text_config(skeleton.build(model_config("gemma2_2b"), True)))
    assert g2.layer_types[:2] == ("sliding_attention", "full_attention") and g2.logit_softcap


def _inputs(name: str, **kw) -> PlanInputs:
    return PlanInputs(config=model_config(name), **kw)


def test_27b_four_bit_on_three_24gib_gpus_fits_and_uses_all_three() -> None:
    p = _inputs("gemma3_27b", quant=Quant("nf4", True), gpus=(24 * GiB,) * 3, cpu_budget=64 * GiB)
    plan = make_plan(p)
    assert plan["fits"] and set(plan["bytes_per_device"]) == {"cuda:0", "cuda:1", "cuda:2"}
    weights = sum(d["weights"] for d in plan["devices"].values())
    assert weights == plan["weights_bytes"] and 14 * GiB < weights < 15.5 * GiB


def test_27b_bf16_on_one_24gib_gpu_does_not_fit_and_suggests_quantization() -> None:
    p = _inputs("gemma3_27b", gpus=(24 * GiB,), strategy="single", cpu_budget=8 * GiB)
    plan = make_plan(p)
    assert not plan["fits"] and plan["bytes_per_device"]["cuda:0"] > 50 * GiB
    tips = suggest(p)
    assert tips and tips[0] == "quant=4bit"  # 8-bit (27 GiB) does not fit 24 GiB either
    assert make_plan(with_changes(p, quant=Quant("nf4", True)))["fits"]


def test_sequential_fills_gpu0_first_and_spills_to_cpu() -> None:
    p = _inputs("gemma3_12b", gpus=(12 * GiB, 12 * GiB), strategy="sequential", cpu_budget=64 * GiB)
    plan = make_plan(p)
    assert plan["devices"]["cuda:0"]["weights"] > plan["devices"]["cuda:1"]["weights"] * 0.8
    assert plan["offloaded_weights_bytes"] > 0 and plan["fits"]  # 22 GiB of bf16 on 2 x 12 GiB: some on CPU
    q = make_plan(with_changes(p, quant=Quant("int8"), gpus=(6 * GiB, 6 * GiB)))
    assert not q["fits"] and any("bitsandbytes refuses" in x for x in q["problems"])


def test_place_follows_accelerate_balanced_rule() -> None:
    items = [devices.Item("emb", 10), *(devices.Item(f"l{i}", 10, True) for i in range(8))]
    out = devices.place(items, [1000, 1000], "balanced", 0, False)
    assert [out[f"l{i}"] for i in range(8)].count("0") >= 3 and out["l7"] == "1"
    assert devices.place(items, [25, 25], "sequential", 1000, False)["l7"] == "cpu"
    assert devices.place(items, [], "auto", 10**6, False)["emb"] == "cpu"


@pytest.mark.parametrize("sizes", [
    [40, 8, 8, 8, 8, 8, 8, 8, 2],     # a large table first (Gemma's embedding): its room is kept until it is placed
    [4, 40, 8, 8, 8, 8, 8, 8, 2],     # ... or second (Gemma 4's per-layer embeddings after the embedding)
    [8, 8, 8, 8, 8, 8, 8, 8, 40],     # last
    [12, 3, 30, 3, 3, 20, 3, 3, 3],
])
@pytest.mark.parametrize("gpu", [40, 60, 75, 90, 200])
def test_sequential_placement_is_accelerates(monkeypatch, sizes: list[int], gpu: int) -> None:
    """devices.place against accelerate's own infer_auto_device_map (one GPU faked, sizes in units of 64 KiB of
    fp32 Linear weights): every unit on the same device. GPU 0 keeps room for the largest unit still to place, so
    a table that comes first does not push the units after it off the GPU once it is placed (E4B's 5.3 GiB
    per-layer table on a 24 GiB card: every weight stays on the GPU)."""
    import torch
    from accelerate import infer_auto_device_map

    unit = 64 * 1024
    model = torch.nn.ModuleDict({f"m{i}": torch.nn.Linear(size * unit // 4 // 64, 64, bias=False)
                                 for i, size in enumerate(sizes)})
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    theirs = infer_auto_device_map(model, max_memory={0: gpu * unit, "cpu": 10**12})
    items = [devices.Item(f"m{i}", size * unit, True) for i, size in enumerate(sizes)]
    ours = devices.place(items, [gpu * unit], "sequential", 10**12, False)
    expand = {name: str(dev) for name, dev in theirs.items()}
    if "" in expand:  # everything on one device
        expand = {it.name: expand[""] for it in items}
    assert ours == expand, (ours, theirs)


def test_lora_count_matches_peft(compose_cfg) -> None:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from gemma_run.loading.random_weights import architecture_config

    cfg = model_config("tiny_gemma3")
    spec = TrainSpec(lora_r=8)
    sk = skeleton.build(cfg, True)
    planned = sum(training.lora_params_by_unit(sk, params.units(sk), spec).values())
    model = AutoModelForCausalLM.from_config(architecture_config(cfg, True), dtype=torch.float32)
    peft_model = get_peft_model(model, LoraConfig(r=8, target_modules=list(spec.target_modules)))
    assert planned == sum(p.numel() for p in peft_model.parameters() if p.requires_grad)


def test_zero3_partitions_and_offloads() -> None:
    base = _inputs("gemma3_12b", mode="train", gpus=(80 * GiB,) * 4,
                   train=TrainSpec(lora=False, world=4, zero_stage=2, seq_len=1024))
    z2, z3 = make_plan(base), make_plan(with_changes(base, train_zero_stage=3))
    w = z2["weights_bytes"]
    assert z2["devices"]["cuda:0"]["weights"] == w and z3["devices"]["cuda:0"]["weights"] == w // 4
    assert z2["training_state_bytes"]["optimizer"] == 12 * z2["trainable_params"] // 4
    off = make_plan(with_changes(base, train_zero_stage=3, train_offload_optimizer=True, train_offload_params=True))
    assert off["devices"]["cuda:0"]["weights"] == 0 and off["devices"]["cpu"]["training_state"] > 0
    no_ckpt = make_plan(with_changes(base, train_gradient_checkpointing=False))
    assert no_ckpt["devices"]["cuda:0"]["activations"] > 2 * z2["devices"]["cuda:0"]["activations"]


def test_full_finetune_of_27b_on_one_gpu_suggests_lora_first() -> None:
    p = _inputs("gemma3_27b", mode="train", gpus=(80 * GiB,), strategy="single",
                train=TrainSpec(lora=False, seq_len=1024, gradient_checkpointing=True))
    assert not make_plan(p)["fits"]
    assert suggest(p)[0] == "lora.enabled=true"


@pytest.mark.slow
def test_cli_plan_writes_result_json(cli, tmp_path) -> None:
    out = cli("task=plan", "model=gemma3_27b", "quant=4bit", "plan.gpus=[24GiB,24GiB,24GiB]")
    assert out.returncode == 0, out.stderr
    assert "fits: yes" in out.stdout and "cuda:2" in out.stdout
    result = json.loads((run_dirs(tmp_path)[-1] / "result.json").read_text())
    assert result["params"]["total"] == 27_009_346_304 and result["fits"] is True
    assert set(result["bytes_per_device"]) == {"cuda:0", "cuda:1", "cuda:2"} and result["suggestion"] is None


@pytest.mark.slow
@pytest.mark.parametrize(("args", "message"), [
    (["model=gemma9"], "Could not find 'model/gemma9'"),
    (["plan.gpus=[24GiB,lots]"], "cannot read 'lots' as a memory size"),
    (["plan.context=0"], "plan.context=0 must be > 0"),
    (["plan.context=-5"], "must be > 0"),
    (["plan.gpus=[3x24GiB]"], "a device map cannot give every GPU a layer"),
    (["model=gemma3_1b", "model.dtype=float16"], "float16 is refused"),
    (["quant=8bit", "quant.skip_modules=[model,lm_head]"], "no Linear layer bitsandbytes can quantize"),
])
def test_cli_plan_bad_input(cli, args: list[str], message: str) -> None:
    out = cli("task=plan", *args)
    assert out.returncode == 2 and message in out.stderr, out.stderr
    assert "Traceback" not in out.stderr


@pytest.mark.slow
def test_preflight_refuses_infer_that_cannot_fit_before_loading(cli, tmp_path) -> None:
    out = cli("model=gemma3_1b", "model.weights=random", "plan.gpus=[2GiB]", "plan.cpu_memory=1GiB", "prompt=hi",
              timeout=120)
    assert out.returncode == 2 and "preflight" in out.stderr and "Try: quant=4bit" in out.stderr, out.stderr
    assert "building random-weight" not in out.stderr  # refused before the loading path started
    result = json.loads((run_dirs(tmp_path)[-1] / "result.json").read_text())
    assert result["preflight"]["fits"] is False and result["preflight"]["suggestion"]


@pytest.mark.slow
def test_preflight_passes_the_tiny_model_and_can_be_turned_off(cli, tmp_path) -> None:
    ok = cli("prompt=hi", "generation.max_new_tokens=2")
    assert ok.returncode == 0, ok.stderr
    assert json.loads((run_dirs(tmp_path)[-1] / "result.json").read_text())["preflight"]["fits"] is True
    off = cli("prompt=hi", "generation.max_new_tokens=2", "plan.preflight=false", "plan.gpus=[1MiB]")
    assert off.returncode == 0, off.stderr
