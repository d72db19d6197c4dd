"""Selective activation checkpointing (train.checkpoint_layers) and the choice of train.fused_ops, on CPU.

The layers chosen are the ones that recompute (counted: a checkpointed layer's MLP runs twice a step), training
with some layers checkpointed gives the same losses as with all of them, the auto rule's arithmetic and its use
of the GPU's memory figures (faked here), and train.fused_ops' decision where Liger cannot run."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

WORDS = "the quick brown fox jumps over the lazy dog a model runs on the GPUs you have".split()
FOUR_LAYERS = ["model.config.num_hidden_layers=4",
               "model.config.layer_types=[sliding_attention,full_attention,sliding_attention,full_attention]"]
GiB = 2**30


def test_parse_and_count():
    from gemma_run.app.errors import ConfigError
    from gemma_run.training import activation_checkpointing as ck

    assert [ck.parse(v) for v in ("all", "AUTO", 12, "0", "0.5", "1.0")] == ["all", "auto", 12, 0, 0.5, 1.0]
    assert [ck.count(ck.parse(v), 34) for v in ("all", "12", "0.5", "0.1", "1.0", "0")] == [34, 12, 17, 4, 34, 0]
    for bad in ("most", "-1.5", "1.5", "0.0"):
        with pytest.raises(ConfigError) as e:
            ck.parse(bad)
        assert e.value.key == "train.checkpoint_layers"
    with pytest.raises(ConfigError, match="34 decoder layers"):
        ck.count(35, 34)


def test_config_check_names_the_key(compose_cfg):
    from gemma_run.training import activation_checkpointing as ck

    assert ck.check(compose_cfg(["task=train"])) == []  # all, the default
    assert ck.check(compose_cfg(["task=train", "train.checkpoint_layers=auto"])) == []
    assert ck.check(compose_cfg(["task=train", "train.checkpoint_layers=2"])) == []
    [problem] = ck.check(compose_cfg(["task=train", "train.checkpoint_layers=3"]))  # tiny_gemma3 has 2 layers
    assert problem.key == "train.checkpoint_layers" and "2 decoder layers" in str(problem)


def _mlp_calls(model) -> list[int]:
    """Forward + backward of one batch; how often each decoder layer's MLP ran (2: recomputed in backward)."""
    import torch

    from gemma_run.training import activation_checkpointing as ck

    layers = ck.decoder_layers(model)
    calls = [0] * len(layers)
    hooks = [layer.mlp.register_forward_hook(lambda *a, i=i: calls.__setitem__(i, calls[i] + 1))
             for i, layer in enumerate(layers)]
    model.train()
    ids = torch.randint(3, 500, (2, 24), generator=torch.Generator().manual_seed(0))
    model(input_ids=ids, labels=ids).loss.backward()
    for h in hooks:
        h.remove()
    return calls


def test_chosen_layers_recompute_and_the_others_do_not(compose_cfg):
    """Under peft, after transformers enabled checkpointing on every layer (as the Trainer does)."""
    from gemma_run.loading import load
    from gemma_run.training import activation_checkpointing as ck
    from gemma_run.training import lora

    cfg = compose_cfg(["task=train", *FOUR_LAYERS])
    model = load(cfg, device_map=None).model
    model.config.use_cache = False
    model = lora.apply(model, cfg.lora, quantized=False, sharded=False, gradient_checkpointing=True)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    assert len(ck.decoder_layers(model)) == 4 and ck.checkpointed(model) == [0, 1, 2, 3]
    assert _mlp_calls(model) == [2, 2, 2, 2]
    assert ck.select(model, 2) == [0, 1] and ck.checkpointed(model) == [0, 1]
    assert _mlp_calls(model) == [2, 2, 1, 1]  # the first two recompute; the last two kept their activations
    assert ck.select(model, 0) == [] and _mlp_calls(model) == [1, 1, 1, 1]


def _text(tmp_path: Path) -> Path:
    rnd = random.Random(0)
    path = tmp_path / "text.jsonl"
    path.write_text("".join(json.dumps({"text": " ".join(rnd.choices(WORDS, k=30))}) + "\n" for _ in range(24)))
    return path


def test_partial_checkpointing_trains_as_full(compose_cfg, tmp_path: Path):
    """Same seed, same data, LoRA dropout on (the recompute must replay the same masks): the same losses."""
    from gemma_run import run

    data = _text(tmp_path)
    curves, results = {}, {}
    for name, extra in (("all", ["train.checkpoint_layers=all"]), ("half", ["train.checkpoint_layers=0.5"]),
                        ("none", ["train.gradient_checkpointing=false"])):
        cfg = compose_cfg(["task=train", *FOUR_LAYERS, f"data.train_file={data}", "train.max_steps=5",
                           "train.logging_steps=1", "train.save_steps=100", "train.per_device_batch_size=4",
                           "train.max_seq_length=48", "train.learning_rate=1e-3", "lora.dropout=0.1",
                           "train.gradient_checkpointing=true", *extra])
        results[name] = run(cfg, tmp_path / name)
        rows = [json.loads(line) for line in (tmp_path / name / "losses.jsonl").read_text().splitlines()]
        curves[name] = [r["loss"] for r in rows if "loss" in r]
    assert [(results[n]["checkpointed_layers"], results[n]["decoder_layers"]) for n in ("all", "half", "none")] == \
        [(4, 4), (2, 4), (0, 4)]
    assert results["half"]["checkpoint_layers_why"] == "train.checkpoint_layers=0.5"
    assert len(curves["all"]) == 5 and curves["all"][0] != curves["all"][-1]  # it trained
    for name in ("half", "none"):
        worst = max(abs(a - b) for a, b in zip(curves["all"], curves[name], strict=True))
        assert worst <= 1e-6, (name, curves)


def test_auto_arithmetic():
    from gemma_run.planning import kv
    from gemma_run.training import activation_checkpointing as ck

    # Gemma 3 4B at 2048 x 4 tokens, bf16, LoRA on all 7 projections with dropout
    shape = kv.Shape(hidden=2560, intermediate=10240, layers=34, heads=8, kv_heads=4, head_dim=256, vocab=262208,
                     layer_types=("sliding_attention",) * 34, sliding_window=1024, logit_softcap=False)
    tokens = 8192
    lora_inputs = 5 * 2560 + 2048 + 10240  # q, k, v, gate, up read the hidden state; o the heads; down the MLP
    full = ck.layer_bytes(shape, tokens, 2, lora_inputs, dropout=True)
    assert 2.6 * GiB < full < 3.0 * GiB  # 1.77 GiB of the model's own tensors, x1.15, + 0.77 GiB of dropout
    assert ck.layer_bytes(shape, tokens, 2, lora_inputs, dropout=False) < full - 0.7 * GiB
    inp = tokens * shape.hidden * 2
    figures = dict(allocated=int(7.3 * GiB), state=GiB // 3, loss=GiB, work=int(1.6 * GiB), full=full,
                   checkpoint_input=inp)
    all_layers = 7.3 * GiB + GiB // 3 + GiB + 34 * inp + full + int(1.6 * GiB)  # the first recompute's peak
    n, fig = ck.plan_auto(34, usable=int(all_layers), **figures)
    assert n == 33 and fig["planned_peak_bytes"] == int(all_layers) - inp  # the last layer whole costs nothing
    n, fig = ck.plan_auto(34, usable=int(all_layers) - inp - 1, **figures)
    assert n == 34 and fig["planned_peak_bytes"] > int(all_layers) - inp - 1  # nothing fits: all, the least
    n, fig = ck.plan_auto(34, usable=int(all_layers + 2 * full), **figures)
    assert n == 31 and fig["planned_peak_bytes"] <= all_layers + 2 * full  # two layers' room: three whole
    n, _ = ck.plan_auto(34, usable=200 * GiB, **figures)
    assert n == 0
    counts = [ck.plan_auto(34, usable=int(u * GiB), **figures)[0] for u in range(14, 120, 5)]
    assert counts == sorted(counts, reverse=True)  # more memory, fewer layers checkpointed


def _fake_gpu(monkeypatch, free: int, allocated: int) -> None:
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda *a: (free, 80 * GiB))
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda *a: allocated)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda *a: allocated)


def test_auto_reads_the_gpu_and_the_cap(compose_cfg, monkeypatch):
    """auto on the tiny model at 8 x 2048 tokens, with the CUDA memory figures faked: the GPU's free memory or
    train.gpu_memory_cap bounds it; DeepSpeed and no GPU checkpoint every layer."""
    from gemma_run.loading import load
    from gemma_run.training import activation_checkpointing as ck
    from gemma_run.training import lora

    def cfg_with(*extra):
        return compose_cfg(["task=train", *FOUR_LAYERS, "train.gradient_checkpointing=true",
                            "train.checkpoint_layers=auto", "train.per_device_batch_size=8",
                            "train.max_seq_length=2048", *extra])

    cfg = cfg_with()
    model = lora.apply(load(cfg, device_map=None).model, cfg.lora, quantized=False, sharded=False,
                       gradient_checkpointing=True)
    cpu = ck.choose(cfg, model, "chunked")
    assert cpu.checkpointed == [0, 1, 2, 3] and "no CUDA" in cpu.why
    _fake_gpu(monkeypatch, free=80 * GiB, allocated=GiB)
    roomy = ck.choose(cfg, model, "chunked")
    assert roomy.checkpointed == [] and "4 of 4 layers keep" in roomy.why and "of the GPU" in roomy.why
    full = roomy.estimate["layer_bytes"]
    assert full > 8 * 2048 * 64 * 4 * 4  # a tiny layer still saves more than four fp32 hidden states a token
    assert roomy.estimate["usable_bytes"] == int(0.9 * 81 * GiB)  # free + this process's own
    # a cap with room for 2.5 whole layers above all-layer checkpointing (whose peak is the recompute's)
    need = GiB + roomy.estimate["state_bytes"] + roomy.estimate["loss_bytes"] + \
        4 * roomy.estimate["checkpoint_input_bytes"] + full + roomy.estimate["work_bytes"]
    cap = int((need + 2.5 * full) / 0.9)
    capped = ck.choose(cfg_with(f"train.gpu_memory_cap={cap}"), model, "chunked")
    assert 1 <= len(capped.checkpointed) <= 3 and capped.checkpointed == list(range(len(capped.checkpointed)))
    assert "train.gpu_memory_cap" in capped.why and capped.estimate["planned_peak_bytes"] <= 0.9 * cap
    _fake_gpu(monkeypatch, free=GiB // 100, allocated=GiB)  # a full GPU: every layer
    assert ck.choose(cfg, model, "chunked").checkpointed == [0, 1, 2, 3]
    _fake_gpu(monkeypatch, free=80 * GiB, allocated=GiB)
    ds = ck.choose(cfg_with("deepspeed=zero2"), model, "chunked")
    assert ds.checkpointed == [0, 1, 2, 3] and "DeepSpeed" in ds.why
    off = ck.choose(cfg_with("train.gradient_checkpointing=false"), model, "chunked")
    assert off.checkpointed == [] and off.why == "train.gradient_checkpointing=false"


def test_fused_ops_choice_where_liger_cannot_run(compose_cfg):
    from types import SimpleNamespace

    from gemma_run.app.errors import GemmaRunError
    from gemma_run.loading import load
    from gemma_run.training import fused_ops

    model = load(compose_cfg(["task=train"]), device_map=None).model  # gemma3_text: a type Liger patches
    kind, why = fused_ops.choose("auto", model)
    assert kind == "none" and "no CUDA device" in why
    applied = fused_ops.apply("auto", model)
    assert applied.record() == {"fused_ops": "none", "fused_ops_why": why, "fused_ops_modules": {}}
    assert fused_ops.choose("none", model) == ("none", "train.fused_ops=none: the model's own torch ops")
    with pytest.raises(GemmaRunError) as e:
        fused_ops.choose("liger", model)
    assert e.value.key == "train.fused_ops" and "no CUDA device" in str(e.value) and "train.fused_ops=auto" in \
        e.value.fix
    with pytest.raises(GemmaRunError, match="no CUDA device"):
        fused_ops.check_early("liger", "gemma3")  # from the config, before the model loads
    fused_ops.check_early("liger", "llama")  # a type Liger does not patch: none, decided once it loads
    fused_ops.check_early("auto", "gemma3")
    kind, why = fused_ops.choose("auto", model, zero3=True)  # ZeRO-3: auto keeps the model's ops, before any GPU check
    assert kind == "none" and "ZeRO-3" in why and "train.fused_ops=liger" in why
    other = SimpleNamespace(config=SimpleNamespace(model_type="llama"))
    for asked in ("auto", "liger"):
        kind, why = fused_ops.choose(asked, other)
        assert kind == "none" and "'llama'" in why and "gemma3_text" in why


def test_fused_ops_restore_puts_module_globals_back():
    from transformers.models.gemma3 import modeling_gemma3

    from gemma_run.training import fused_ops

    name = fused_ops.SUPPORTED["gemma3_text"][1]
    rope, norm = modeling_gemma3.apply_rotary_pos_emb, modeling_gemma3.Gemma3RMSNorm
    applied = fused_ops.Applied("liger", "test", {}, {name: dict(vars(modeling_gemma3))})
    modeling_gemma3.apply_rotary_pos_emb, modeling_gemma3.Gemma3RMSNorm = object(), object()  # as Liger does
    applied.restore()
    assert modeling_gemma3.apply_rotary_pos_emb is rope and modeling_gemma3.Gemma3RMSNorm is norm


def test_bench_setup_name_shows_both_levers():
    from gemma_run.tasks.bench_train import setup_name

    row = {"model": "gemma3_4b", "quant": "none", "lora": True, "attn_implementation": "sdpa",
           "loss_kernel": "liger", "deepspeed_stage": 0, "fused_ops": "liger", "gradient_checkpointing": True,
           "checkpointed_layers": 30, "decoder_layers": 34}
    assert setup_name(row) == "gemma3_4b LoRA sdpa loss=liger fused ckpt 30/34"
    assert setup_name({**row, "fused_ops": "none", "gradient_checkpointing": False}) == \
        "gemma3_4b LoRA sdpa loss=liger"
    assert setup_name({**row, "fused_ops": "none", "compile_layers": 34}) == \
        "gemma3_4b LoRA sdpa loss=liger compiled ckpt 30/34"


def test_all_leaves_a_model_without_per_layer_switches_to_the_trainer(compose_cfg):
    """A model whose layers are not transformers' GradientCheckpointingLayer trains as before under the default
    (all); asking for some of its layers names the key and the fix."""
    import torch

    from gemma_run.app.errors import GemmaRunError
    from gemma_run.training import activation_checkpointing as ck

    model = torch.nn.Sequential(torch.nn.Linear(2, 2))
    choice = ck.choose(compose_cfg(["task=train", "train.gradient_checkpointing=true"]), model, "chunked")
    assert choice.layers == 0 and "the Trainer's setting stands" in choice.why
    assert ck.checkpointed(model) is None
    with pytest.raises(GemmaRunError) as e:
        ck.choose(compose_cfg(["task=train", "train.gradient_checkpointing=true", "train.checkpoint_layers=1"]),
                  model, "chunked")
    assert e.value.key == "train.checkpoint_layers" and "train.checkpoint_layers=all" in e.value.fix
