"""The fast training path on CPU: the chunked loss against the model's own (values and gradients), loss
curves of the default path (auto: chunked loss, sdpa) against the seeds' (none, eager), packed rows kept apart
under sdpa, the deepspeed=auto decision, the GPU memory cap in the plan, and task=bench_train end to end."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

WORDS = "the quick brown fox jumps over the lazy dog a model runs on the GPUs you have".split()


def _case(softcap: float | None, n_items: bool, weight_grad: bool):
    import torch

    from gemma_run.training import loss

    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(3, 17, 8, generator=g, dtype=torch.float64).float().requires_grad_()
    weight = torch.randn(50, 8, generator=g).requires_grad_(weight_grad)
    labels = torch.randint(0, 50, (3, 17), generator=g)
    labels[0, :5] = -100
    labels[2, 9] = -100
    targets = loss.shift_labels(labels)
    items = torch.tensor(70) if n_items else None  # as with gradient accumulation: more items than this batch
    return hidden, weight, targets, dict(softcap=softcap, num_items_in_batch=items)


@pytest.mark.parametrize("softcap", [None, 30.0])
@pytest.mark.parametrize("n_items", [False, True])
@pytest.mark.parametrize("weight_grad", [False, True])
def test_chunked_loss_matches_reference(softcap, n_items, weight_grad):
    import torch

    from gemma_run.training import loss

    results = []
    for fn in (loss.reference, lambda *a, **k: loss.chunked(*a, **k, chunk=7)):
        hidden, weight, targets, kw = _case(softcap, n_items, weight_grad)
        value = fn(hidden.reshape(-1, 8), weight, targets, **kw)
        (value * 3).backward()
        results.append((value.detach(), hidden.grad, weight.grad))
    (ref, ref_h, ref_w), (got, got_h, got_w) = results
    assert torch.allclose(got, ref, atol=1e-5), (got, ref)
    assert torch.allclose(got_h, ref_h, atol=1e-5)
    assert (got_w is None) == (not weight_grad)
    if weight_grad:
        assert torch.allclose(got_w, ref_w, atol=1e-5)
    assert ref_h.abs().sum() > 0


def test_shift_ignores_the_last_position_and_packed_sequence_starts():
    import torch

    from gemma_run.training import loss

    # DataCollatorWithFlattening(separator_id=-100): the second sequence's first label is -100
    labels = torch.tensor([[5, 6, 7, -100, 8, 9]])
    assert loss.shift_labels(labels).tolist() == [[6, 7, -100, 8, 9, -100]]


def _text(tmp_path: Path, n: int = 24, words: int = 30) -> Path:
    rnd = random.Random(0)
    path = tmp_path / "text.jsonl"
    path.write_text("".join(json.dumps({"text": " ".join(rnd.choices(WORDS, k=words))}) + "\n" for _ in range(n)))
    return path


def _losses(run_dir: Path) -> list[float]:
    rows = [json.loads(line) for line in (run_dir / "losses.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows if "loss" in r]


@pytest.mark.parametrize("packing", [False, True])
def test_fast_path_loss_curve_matches_reference(compose_cfg, tmp_path: Path, packing: bool):
    from gemma_run import run

    data = _text(tmp_path)
    curves, results = [], []
    for name, extra in (("ref", ["train.loss_kernel=none", "train.attn_implementation=eager"]), ("fast", [])):
        cfg = compose_cfg(["task=train", f"data.train_file={data}", "train.max_steps=10", "train.logging_steps=1",
                           "train.save_steps=100", "train.per_device_batch_size=4", "train.max_seq_length=64",
                           "train.gradient_accumulation_steps=2", "lora.dropout=0", f"data.packing={packing}",
                           "train.learning_rate=1e-3", *extra])
        results.append(run(cfg, tmp_path / name))
        curves.append(_losses(tmp_path / name))
    ref, fast = results
    assert (ref["loss_kernel"], ref["attn_implementation"]) == ("none", "eager")
    assert (fast["loss_kernel"], fast["attn_implementation"]) == ("chunked", "sdpa")
    assert len(curves[0]) == len(curves[1]) == 10
    assert curves[0][0] != curves[0][-1]  # it trained
    worst = max(abs(a - b) / abs(a) for a, b in zip(*curves, strict=True))
    print(f"loss curves, fast vs reference: max relative difference {worst:.2e} over {len(curves[0])} steps")
    assert worst <= 1e-4, curves


def test_packed_rows_stay_apart_under_sdpa(compose_cfg):
    """Two sequences packed in one row (position ids restart, no attention mask) give each token the same loss
    as the two run on their own: sdpa's mask follows the position ids."""
    import torch

    from gemma_run.loading import load

    cfg = compose_cfg(["task=train", "model.attn_implementation=sdpa"])
    model = load(cfg, device_map=None).model
    model.config.use_cache = False
    assert model.config._attn_implementation == "sdpa"
    g = torch.Generator().manual_seed(0)
    a, b = torch.randint(3, 500, (1, 20), generator=g), torch.randint(3, 500, (1, 28), generator=g)  # > window 16

    def token_losses(ids, **kw):
        logits = model(input_ids=ids, use_cache=False, **kw).logits[0, :-1].float()
        return torch.nn.functional.cross_entropy(logits, ids[0, 1:], reduction="none")

    with torch.no_grad():
        alone = torch.cat([token_losses(a), token_losses(b)])
        packed_ids = torch.cat([a, b], dim=1)
        pos = torch.cat([torch.arange(20), torch.arange(28)])[None]
        packed = token_losses(packed_ids, position_ids=pos)
        packed = torch.cat([packed[:19], packed[20:]])  # drop the a->b boundary position
        unpacked = token_losses(packed_ids)  # one long sequence: b attends to a
    assert torch.allclose(packed, alone, atol=1e-5)
    assert not torch.allclose(unpacked[20:], alone[19:], atol=1e-3)


def test_deepspeed_auto_decision(compose_cfg, monkeypatch):
    from gemma_run.training import zero_choice

    def decide(*overrides):
        cfg = compose_cfg(["task=train", "data.train_file=x.jsonl", *overrides])
        assert cfg.deepspeed.auto  # the default
        reason = zero_choice.resolve(cfg)
        assert zero_choice.resolve(cfg) == reason  # idempotent
        return int(cfg.deepspeed.stage), bool(cfg.deepspeed.offload_optimizer), reason

    monkeypatch.setattr("gemma_run.planning.inputs.detect_gpus", lambda: [])
    assert decide()[0] == 0 and "no GPU" in decide()[2]
    stage, _, why = decide("plan.gpus=[80GiB]", "model=gemma3_4b", "train.max_seq_length=2048",
                           "train.per_device_batch_size=4")
    assert stage == 0 and "one GPU suffices" in why and "2.8x" in why
    # 27B in bf16 (54 GB of weights) all on one 24 GiB GPU: not without ZeRO; with ZeRO-3 offload to CPU it fits
    stage, offload, why = decide("plan.gpus=[24GiB]", "model=gemma3_27b", "plan.cpu_memory=512GiB",
                                 "device_map=single", "train.gradient_checkpointing=true")
    assert (stage, offload) == (3, True) and "does not fit" in why
    stage, _, why = decide("plan.gpus=[24GiB,24GiB,24GiB]", "launcher=torchrun", "launcher.nproc_per_node=3")
    assert stage == 3 and "3 processes" in why
    cfg = compose_cfg(["task=train", "deepspeed=zero3"])
    assert zero_choice.resolve(cfg) is None and "one process" in zero_choice.explicit_warning(cfg)


def test_gpu_memory_cap_is_the_planned_gpu_size(compose_cfg):
    from gemma_run.planning import inputs
    from gemma_run.planning.plan import make_plan

    base = ["task=train", "model=gemma3_27b", "quant=4bit", "plan.gpus=[80GiB]", "train.max_seq_length=2048",
            "train.gradient_checkpointing=true"]
    p, _ = inputs.from_cfg(compose_cfg([*base, "train.gpu_memory_cap=24GiB"]), "train")
    assert p.gpus == (24 * 2**30,)
    plan = make_plan(p)
    assert plan["fits"], plan["problems"]  # 27B QLoRA at 2048 tokens fits a 24 GiB card with the fused loss
    p_ref, _ = inputs.from_cfg(compose_cfg([*base, "train.gpu_memory_cap=24GiB", "train.loss_kernel=none"]), "train")
    assert make_plan(p_ref)["bytes_per_device"]["cuda:0"] > plan["bytes_per_device"]["cuda:0"] + 2**30


@pytest.mark.slow
def test_bench_train_end_to_end(cli, tmp_path: Path):
    from helpers.runs import run_dirs

    proc = cli("task=bench_train", "train.max_seq_length=64", "train.per_device_batch_size=2", "task.steps=3",
               "task.warmup_steps=1", timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    [run_dir] = run_dirs(tmp_path)
    r = json.loads((run_dir / "result.json").read_text())
    bench = json.loads((run_dir / "bench_train.json").read_text())
    assert r["status"] == "ok" and r["tokens_per_second"] > 0 and r["timed_steps"] == 3
    assert len(r["step_seconds"]) == 4 and abs(sum(r["step_seconds"][1:]) - r["timed_seconds"]) < 0.01
    median = sorted(r["step_seconds"][1:])[1]
    assert abs(r["tokens_per_second"] - r["tokens_per_step"] / median) < 0.05 * r["tokens_per_second"]  # ms rounding
    mean = 3 * r["tokens_per_step"] / r["timed_seconds"]  # timed_seconds is rounded to the millisecond
    assert abs(r["tokens_per_second_mean"] - mean) < 0.02 * mean
    assert 2 * 60 <= r["tokens_per_step"] <= 2 * 64  # examples cut at a word boundary, at most 64 tokens
    assert r["loss_kernel"] == "chunked" and r["attn_implementation"] == "sdpa" and r["mfu"] is None  # no GPU
    assert r["mfu_6n"] is None and r["matmul_tflops_measured"] is None
    assert r["compile_layers"] == 0  # auto: layers compiled on a CUDA GPU only
    assert r["flops_per_token"] > 0 and bench["tokens_per_second"] == r["tokens_per_second"]
    assert "tokens/s" in proc.stdout


@pytest.mark.parametrize("fp32", [False, True])
def test_qlora_keeps_the_frozen_embedding_in_bf16(compose_cfg, fp32: bool):
    import torch

    from gemma_run.loading import load
    from gemma_run.training import lora

    cfg = compose_cfg(["task=train", "quant=4bit", "model.dtype=bfloat16", f"lora.fp32_embeddings={fp32}"])
    model = load(cfg, device_map=None).model
    model = lora.apply(model, cfg.lora, quantized=True, sharded=False, gradient_checkpointing=True)
    emb = model.get_input_embeddings().weight
    assert emb.dtype == (torch.float32 if fp32 else torch.bfloat16) and not emb.requires_grad
    assert model.get_output_embeddings().weight is emb  # still tied


@pytest.mark.parametrize("multimodal", [False, True])
def test_fused_loss_hook_matches_the_models_loss(multimodal: bool):
    """The hook's hidden states + lm_head weight give the model's own loss, for Gemma3ForCausalLM and the
    multimodal Gemma3ForConditionalGeneration (text through it), with a softcap and peft adapters in place."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import Gemma3Config, Gemma3ForCausalLM, Gemma3ForConditionalGeneration, Gemma3TextConfig

    from gemma_run.training import loss_hook

    torch.manual_seed(0)
    text = Gemma3TextConfig(vocab_size=300, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                            num_attention_heads=2, num_key_value_heads=1, head_dim=32, sliding_window=8,
                            layer_types=["sliding_attention", "full_attention"], final_logit_softcapping=30.0,
                            attn_implementation="sdpa")
    if multimodal:
        vision = {"model_type": "siglip_vision_model", "hidden_size": 32, "intermediate_size": 64,
                  "num_hidden_layers": 1, "num_attention_heads": 2, "image_size": 28, "patch_size": 14}
        model = Gemma3ForConditionalGeneration(Gemma3Config(text_config=text.to_dict(), vision_config=vision,
                                                            mm_tokens_per_image=4, image_token_index=299))
    else:
        model = Gemma3ForCausalLM(text)
    model = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], lora_dropout=0.0))
    ids = torch.randint(0, 290, (2, 12))
    labels = ids.clone()
    labels[0, :4] = -100
    inputs = {"input_ids": ids, "labels": labels}
    if multimodal:
        inputs["token_type_ids"] = torch.zeros_like(ids)
    expected = model(**inputs).loss
    got, _ = loss_hook.fused_loss(model, inputs, "chunked")
    assert torch.allclose(got, expected, atol=1e-5), (got, expected)
    assert loss_hook.softcap(loss_hook.causal_lm(model)) == 30.0 and loss_hook.usable(model) is None


def test_bench_train_profile_records_only_the_timed_steps(tmp_path: Path):
    import torch

    from gemma_run.tasks.bench_train import _timer

    path = tmp_path / "profile.txt"
    timer = _timer(warmup=1, steps=2, profile=path)
    a = torch.randn(64, 64)
    timer.on_train_begin(None, None, None)
    torch.cumsum(a, 0)  # the warm-up step: not recorded
    timer.on_step_end(None, None, None)
    assert timer.recorder.recording
    for _ in range(2):
        a @ a
        timer.on_step_end(None, None, None)
    assert not timer.recorder.recording and len(timer.ends) == 3
    text = path.read_text()
    assert text.startswith("cpu time") and "aten::mm" in text and "aten::cumsum" not in text
