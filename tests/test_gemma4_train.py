"""Training the tiny Gemma 4 models (tiny_gemma4: PLE, KV-shared layers, k_eq_v global layers with a larger head,
final logit softcapping; tiny_gemma4_moe: experts) on CPU: the default path (chunked loss with the softcap,
sdpa, compiled and checkpointed layers) gives the reference path's loss curve (eager attention, the model's own
loss, nothing compiled), also under gradient accumulation and QLoRA; the loss scale under gradient accumulation;
adapters on the experts; sdpa against eager; FlashAttention refused for heads above 256; LoRA targets that match
nothing named with the model's linear layers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers.data import alpaca_rows, write_jsonl
from helpers.run_if import RunIf
from helpers.runs import lora_b_norm, losses, train_api

from gemma_run.app.errors import GemmaRunError

EXPERTS = "lora.target_parameters=[experts.gate_up_proj,experts.down_proj]"
REFERENCE = ["train.loss_kernel=none", "train.attn_implementation=eager", "train.compile_layers=false",
             "train.gradient_checkpointing=false"]
DEFAULTS_OF_A_GPU = ["train.loss_kernel=auto", "train.attn_implementation=auto", "train.compile_layers=true",
                     "train.gradient_checkpointing=true"]


@pytest.fixture
def alpaca(tmp_path: Path) -> Path:
    return write_jsonl(tmp_path / "alpaca.jsonl", alpaca_rows())


def _common(model: str, alpaca: Path, *extra: str) -> list[str]:
    return [f"model={model}", f"data.train_file={alpaca}", "train.max_steps=4", "train.save_steps=4",
            "train.per_device_batch_size=4", "train.gradient_accumulation_steps=2", "lora.dropout=0",
            "train.learning_rate=1e-3", *extra]


def _worst(a: dict[int, float], b: dict[int, float]) -> float:
    assert sorted(a) == sorted(b) == [1, 2, 3, 4] and a[1] != a[4], (a, b)  # it trained
    return max(abs(a[s] - b[s]) / abs(a[s]) for s in a)


@pytest.mark.slow
@pytest.mark.parametrize(("model", "extra"), [("tiny_gemma4", ()), ("tiny_gemma4_moe", (EXPERTS,))],
                         ids=["dense", "moe-experts"])
def test_default_path_gives_the_reference_curve(compose_cfg, alpaca: Path, tmp_path: Path, model: str,
                                                extra: tuple[str, ...]) -> None:
    """4 LoRA steps, 2 micro-batches each: the chunked loss (softcap applied), sdpa, compiled and checkpointed
    layers give the losses of eager attention with the model's own loss and nothing compiled (fp32)."""
    common = _common(model, alpaca, *extra)
    ref = train_api(compose_cfg, tmp_path / "ref", *common, *REFERENCE)
    fast = train_api(compose_cfg, tmp_path / "fast", *common, *DEFAULTS_OF_A_GPU)
    assert (ref["loss_kernel"], ref["attn_implementation"], ref["compile_layers"]) == ("none", "eager", 0)
    layers = 4 if model == "tiny_gemma4" else 2
    assert (fast["loss_kernel"], fast["attn_implementation"]) == ("chunked", "sdpa")
    assert fast["compile_layers"] == fast["checkpointed_layers"] == layers
    worst = _worst(losses(tmp_path / "ref"), losses(tmp_path / "fast"))
    assert worst <= 1e-4, worst
    assert lora_b_norm(Path(fast["adapter"])) > 0


# QLoRA keeps the tiny MoE's router (4 outputs) unquantized on every machine: bitsandbytes' AVX512-BF16 CPU kernel
# needs output sizes in multiples of 32, and a CPU without it would take another path (the published models'
# routers have 128 outputs)
@pytest.mark.parametrize("quant", [[], ["quant=4bit", "quant.compute_dtype=float32",
                                        "quant.skip_modules=[lm_head,router.proj]"]], ids=["lora", "qlora"])
def test_experts_get_adapters(compose_cfg, alpaca: Path, tmp_path: Path, quant: list[str]) -> None:
    """lora.target_parameters puts adapters on the MoE's 3D expert weights (peft's ParamWrapper); they train, under
    QLoRA too (bitsandbytes quantizes the Linear layers; the experts' 3D weights stay in the model's dtype, as the
    planner counts them)."""
    from safetensors.torch import load_file

    result = train_api(compose_cfg, tmp_path / "run", *_common("tiny_gemma4_moe", alpaca, EXPERTS), *quant,
                       "train.max_steps=2", "train.save_steps=2")
    assert result["quantized"] is bool(quant)
    tensors = load_file(Path(result["adapter"]) / "adapter_model.safetensors")
    experts = {k: t for k, t in tensors.items() if ".experts." in k}
    assert any("lora_A" in k for k in experts) and any("lora_B" in k for k in experts), sorted(tensors)
    assert sum(float(t.norm()) for k, t in experts.items() if "lora_B" in k) > 0
    config = json.loads((Path(result["adapter"]) / "adapter_config.json").read_text())
    assert sorted(config["target_parameters"]) == ["experts.down_proj", "experts.gate_up_proj"]


def test_qlora_on_cpu_gives_the_reference_curve(compose_cfg, alpaca: Path, tmp_path: Path) -> None:
    """QLoRA (bitsandbytes 4-bit on CPU): the chunked loss and sdpa train the curve of the model's own loss with
    eager attention on the same quantized weights. The 4-bit layers compute in fp32 here, so the curves agree to
    fp32 rounding (in their default bf16 the two paths round differently from the second step on)."""
    common = _common("tiny_gemma4", alpaca, "quant=4bit", "quant.compute_dtype=float32")
    ref = train_api(compose_cfg, tmp_path / "ref", *common, "train.loss_kernel=none", "train.attn_implementation=eager")
    fast = train_api(compose_cfg, tmp_path / "fast", *common)
    assert ref["quantized"] and fast["quantized"] and fast["loss_kernel"] == "chunked"
    assert _worst(losses(tmp_path / "ref"), losses(tmp_path / "fast")) <= 1e-4
    assert lora_b_norm(Path(fast["adapter"])) > 0


def test_gradient_accumulation_keeps_the_loss_scale(compose_cfg, alpaca: Path, tmp_path: Path) -> None:
    """Batches of 4 in one micro-batch and in two of 2 train the same curve: the loss of each micro-batch is
    summed over the whole batch's labelled tokens (num_items_in_batch reaches Gemma 4's loss), not averaged per
    micro-batch. The examples differ in length, so a per-micro-batch mean would differ."""
    common = _common("tiny_gemma4", alpaca)
    train_api(compose_cfg, tmp_path / "one", *common, "train.per_device_batch_size=4",
              "train.gradient_accumulation_steps=1")
    train_api(compose_cfg, tmp_path / "two", *common, "train.per_device_batch_size=2",
              "train.gradient_accumulation_steps=2")
    assert _worst(losses(tmp_path / "one"), losses(tmp_path / "two")) <= 1e-4


def test_fused_loss_equals_the_models_own_with_the_softcap(compose_cfg) -> None:
    """One batch through the fused path's hook (every position of the KV-shared layers kept) against the
    model's own loss, which softcaps its logits: the same value and the same gradients."""
    import torch

    from gemma_run.loading import load
    from gemma_run.training import loss_hook

    model = load(compose_cfg(["model=tiny_gemma4", "model.attn_implementation=eager"]), device_map=None).model
    assert model.config.final_logit_softcapping == 30.0 and model.config.num_kv_shared_layers == 2
    model.config.use_cache = False
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(10, 500, (2, 40), generator=g)  # longer than the sliding window (16)
    labels = ids.clone()
    labels[0, :7] = -100
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}
    results = []
    for fused in (False, True):
        model.zero_grad()
        value = loss_hook.fused_loss(model, inputs, "chunked")[0] if fused else model(**inputs).loss
        value.backward()
        results.append((value.detach(), [p.grad.clone() for p in model.parameters() if p.grad is not None]))
    (ref, ref_grads), (got, got_grads) = results
    assert torch.allclose(got, ref, rtol=1e-5), (got, ref)
    assert len(ref_grads) == len(got_grads) > 0
    assert all(torch.allclose(a, b, atol=1e-5, rtol=1e-4) for a, b in zip(ref_grads, got_grads, strict=True))


def test_sdpa_computes_what_eager_does(compose_cfg) -> None:
    """Gemma 4's attention (two head dims, k_eq_v, KV-shared layers) under sdpa: eager's logits, for a left-padded
    batch whose long row runs past the sliding window."""
    import torch

    from gemma_run.loading import load

    cfg = compose_cfg(["model=tiny_gemma4"])
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(10, 500, (2, 40), generator=g)
    mask = torch.ones_like(ids)
    mask[1, :9] = 0
    logits = {}
    for attn in ("eager", "sdpa"):
        cfg.model.attn_implementation = attn
        model = load(cfg, device_map=None).model
        assert model.config._attn_implementation == attn
        with torch.no_grad():
            logits[attn] = model(input_ids=ids, attention_mask=mask, use_cache=False).logits
    assert torch.allclose(logits["sdpa"][:, 9:], logits["eager"][:, 9:], atol=1e-4)
    assert torch.allclose(logits["sdpa"][0], logits["eager"][0], atol=1e-4)


def test_flash_attention_gives_way_to_sdpa_above_head_dim_256(compose_cfg) -> None:
    from gemma_run.training import attention

    big = compose_cfg(["model=tiny_gemma4", "model.config.global_head_dim=512"]).model
    assert attention.max_head_dim(big) == 512
    attn, why = attention.choose("flash_attention_2", big)
    assert attn == "sdpa" and "256" in why and "512" in why
    big.attn_implementation = "flash_attention_2"
    assert attention.choose("auto", big)[0] == "sdpa"
    small = compose_cfg(["model=tiny_gemma4"]).model
    assert attention.max_head_dim(small) == 64
    assert attention.choose("flash_attention_2", small)[0] == "flash_attention_2"
    assert attention.choose("auto", small)[0] == "sdpa"  # no attention softcapping
    assert attention.choose("flash_attention_2", compose_cfg([]).model)[0] == "flash_attention_2"  # Gemma 3


@pytest.mark.parametrize("model", ["tiny_gemma4", "tiny_gemma3"])
def test_lora_targets_matching_nothing_name_the_linear_layers(compose_cfg, model: str) -> None:
    from gemma_run.loading import load
    from gemma_run.training import lora

    cfg = compose_cfg([f"model={model}", "task=train", "lora.target_modules=[qkv_proj,mlp.fc1]"])
    loaded = load(cfg, device_map=None).model
    with pytest.raises(GemmaRunError) as e:
        lora.apply(loaded, cfg.lora, quantized=False, sharded=False, gradient_checkpointing=False)
    assert e.value.key == "lora.target_modules"
    names = lora.linear_names(loaded)
    assert {"q_proj", "o_proj", "down_proj"} <= set(names) and "lm_head" not in names
    assert all(n in str(e.value) for n in names)
    if model == "tiny_gemma4":
        assert "per_layer_input_gate" in names  # PLE's projections are Linear layers too


@RunIf(liger=True)
@pytest.mark.parametrize(("model", "mlps"), [("tiny_gemma4", 4), ("tiny_gemma4_moe", 0)], ids=["dense", "moe"])
def test_liger_patches_gemma4s_scaled_norms_and_dense_mlps(compose_cfg, model: str, mlps: int) -> None:
    """train.fused_ops=liger on Gemma 4 (the module surgery; the kernels themselves run on a GPU,
    test_train_fused_gpu.py): every norm with a scale and every dense MLP become Liger's, v_norm (no scale), the
    per-layer-input norms and the MoE layers' own modules stay the model's, and the module globals come back."""
    from transformers.models.gemma4 import modeling_gemma4

    from gemma_run.loading import load
    from gemma_run.patches import liger_gemma

    loaded = load(compose_cfg([f"model={model}", "device_map=cpu"]))
    norm = modeling_gemma4.Gemma4RMSNorm
    applied = liger_gemma._apply(loaded.model, why="test")
    try:
        kinds: dict[str, set[str]] = {}
        for name, module in loaded.model.named_modules():
            if name.endswith(("norm", "mlp", "layernorm")):
                kinds.setdefault(name.rsplit(".", 1)[-1], set()).add(module._get_name())
        assert kinds["v_norm"] == {"Gemma4RMSNorm"}
        for scaled in ("input_layernorm", "post_attention_layernorm", "pre_feedforward_layernorm",
                       "post_feedforward_layernorm", "q_norm", "k_norm"):
            assert kinds[scaled] == {"LigerRMSNorm"}, scaled
        assert applied.modules.get("LigerGEGLUMLP", 0) == mlps
        assert kinds["mlp"] == ({"LigerGEGLUMLP"} if mlps else {"Gemma4TextMLP"})
    finally:
        applied.restore()
    assert modeling_gemma4.Gemma4RMSNorm is norm


def test_fused_ops_on_gemma4_auto_keeps_the_models_ops_and_says_why(compose_cfg) -> None:
    from gemma_run.loading import load
    from gemma_run.training import fused_ops

    model = load(compose_cfg(["model=tiny_gemma4", "device_map=cpu"])).model
    kind, why = fused_ops.choose("auto", model)
    assert kind == "none" and "gemma4_text" in why and "train.fused_ops=liger" in why
