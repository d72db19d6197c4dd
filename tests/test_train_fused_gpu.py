"""Liger's fused body kernels (train.fused_ops) and auto selective checkpointing (train.checkpoint_layers) on a
GPU (skipped without CUDA), on a random-weight Gemma 3 1B (and Gemma 4 E4B) at its real width with few layers
(helpers.shapes):

- after fused_ops.apply every norm and MLP of the model is Liger's, RoPE is Liger's while training, the loss and
  the norms' gradients are as close to the model's own ops in fp32 as its own ops in bf16 are, and restore()
  gives transformers its functions back;
- training 8 steps with train.fused_ops=liger gives the loss curve of train.fused_ops=none (same data and seed);
- train.checkpoint_layers=auto inside a 9 GiB cap (six layers of ~1.5 GiB activations each) leaves some layers
  whole, checkpoints others and stays inside its budget.

    GEMMA_RUN_TEST_CACHE=/tmp/gr-cache python -m pytest tests/test_train_fused_gpu.py -q -s
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from helpers.run_if import RunIf
from helpers.shapes import GEMMA3_1B, GEMMA3_1B_LAYERS, GEMMA4_E4B

WORDS = "the quick brown fox jumps over the lazy dog a model runs on the GPUs you have".split()
LAYERS = GEMMA3_1B_LAYERS


def _data(tmp_path: Path, words: int = 400, n: int = 64) -> Path:
    rnd = random.Random(0)
    data = tmp_path / "text.jsonl"
    data.write_text("".join(json.dumps({"text": " ".join(rnd.choices(WORDS, k=words))}) + "\n" for _ in range(n)))
    return data


def _norms_training(cfg):
    """The model of ``cfg`` loaded for training with only its norms' weights trainable (their gradients go
    through Liger's backward)."""
    from gemma_run.loading import load

    model = load(cfg).model
    model.config.use_cache = False
    model.train()
    for p in model.parameters():
        p.requires_grad_(p.ndim == 1)
    return model


def _loss_and_grads(model, ids):
    model.zero_grad(set_to_none=True)
    out = model(input_ids=ids, labels=ids)
    out.loss.backward()
    grads = {n: p.grad.float().clone() for n, p in model.named_parameters() if p.grad is not None}
    return out.loss.float().item(), grads


def _own_and_liger_against_fp32(compose_cfg, overrides: list[str], while_applied=None):
    """The loss and norm-weight gradients of the model of ``overrides`` on 2 x 512 random tokens, three ways: the
    model's own ops in fp32 on the same (bf16) weights, the reference; its own ops in bf16; Liger's in bf16
    (fused_ops.apply). Returns what apply() did, the three losses and, per norm weight, the relative gradient
    error of its own bf16 ops and of Liger's against the reference. bf16 rounds at different points in each
    path, so Liger's errors are judged against the model's own bf16 errors, not against zero. ``while_applied``
    is called with the model while Liger's ops are in it."""
    import gc

    import torch

    from gemma_run.training import fused_ops

    model = _norms_training(compose_cfg(["task=train", *overrides, "model.dtype=bfloat16"]))
    ids = torch.randint(3, 200000, (2, 512), generator=torch.Generator().manual_seed(0)).to(model.device)
    ref = _norms_training(compose_cfg(["task=train", *overrides, "model.dtype=float32"]))
    assert next(ref.parameters()).dtype == torch.float32
    with torch.no_grad():
        for (name, p), (ref_name, q) in zip(model.named_parameters(), ref.named_parameters(), strict=True):
            assert name == ref_name
            q.copy_(p.float())
    ref_loss, ref_grads = _loss_and_grads(ref, ids)
    del ref
    gc.collect()
    torch.cuda.empty_cache()
    own_loss, own_grads = _loss_and_grads(model, ids)
    applied = fused_ops.apply("liger", model)
    try:
        loss, grads = _loss_and_grads(model, ids)
        if while_applied is not None:
            while_applied(model)
    finally:
        applied.restore()
    assert grads.keys() == own_grads.keys() == ref_grads.keys()
    names = [n for n, g in ref_grads.items() if g.norm() > 0]

    def error(got, name=None):  # relative to the reference: one weight's gradient, or all of them as one vector
        pick = [name] if name else names
        ref = torch.cat([ref_grads[n].flatten() for n in pick])
        return ((torch.cat([got[n].flatten() for n in pick]) - ref).norm() / ref.norm()).item()

    errors = {n: (error(own_grads, n), error(grads, n)) for n in names}
    errors["all norm weights"] = (error(own_grads), error(grads))
    worst = sorted(errors.items(), key=lambda kv: kv[1][1], reverse=True)[:6]
    print(f"\nloss: fp32 {ref_loss:.5f}, own ops bf16 {own_loss:.5f}, Liger's bf16 {loss:.5f}; relative gradient "
          f"error against fp32 (own ops bf16, Liger's bf16), the worst of {len(names)} norm weights:\n"
          + "\n".join(f"  {n}: {a:.2e}, {b:.2e}" for n, (a, b) in worst))
    return applied, (ref_loss, own_loss, loss), errors


def _liger_no_worse_than_own_bf16(losses, errors) -> None:
    """A norm or MLP that Liger computes differently (say a +1 offset on a weight that has none) moves the loss
    far beyond bf16's rounding, and a wrong backward puts a gradient ~100% off. bf16's own rounding can be large,
    so each gradient is judged against the model's own bf16 error on it: random Gemma 4 weights keep the q/k norms
    at their initial 1 under Gemma 4's unscaled attention, so the attention logits spread over ~sqrt(head_dim), the
    softmax is nearly one-hot, and bf16 gradients land 20-75% from fp32 (on tiny_gemma4, CPU; 2-3% with those norms
    scaled by head_dim ** -0.25, as on Gemma 3)."""
    ref_loss, own_loss, loss = losses
    assert abs(loss - ref_loss) <= 2 * abs(own_loss - ref_loss) + 2e-3 * abs(ref_loss), losses
    own_all, liger_all = errors["all norm weights"]
    assert liger_all <= 2 * own_all + 2e-2, errors
    bad = {n: e for n, e in errors.items() if e[1] > 3 * e[0] + 5e-2}
    assert not bad, bad


@RunIf(gpus=1, liger=True)
def test_liger_patches_every_norm_and_mlp_and_matches(compose_cfg):
    from liger_kernel.transformers.rope import liger_rotary_pos_emb
    from transformers.models.gemma3 import modeling_gemma3

    from gemma_run.training import fused_ops

    assert fused_ops.unavailable() is None, "liger-kernel must be installed on the GPU machine (.whl)"
    rope = modeling_gemma3.apply_rotary_pos_emb
    seen = {}

    def look(model):
        layer = model.model.layers[0]
        seen.update(rope=modeling_gemma3.apply_rotary_pos_emb, mlp=layer.mlp._get_name(),
                    q_norm=layer.self_attn.q_norm._get_name())

    applied, losses, errors = _own_and_liger_against_fp32(compose_cfg, GEMMA3_1B, while_applied=look)
    assert applied.kind == "liger" and "rope, rms_norm, geglu" in applied.why
    assert applied.modules == {"LigerRMSNorm": 6 * LAYERS + 1, "LigerGEGLUMLP": LAYERS}
    assert seen == {"rope": liger_rotary_pos_emb, "mlp": "LigerGEGLUMLP", "q_norm": "LigerRMSNorm"}
    assert modeling_gemma3.apply_rotary_pos_emb is rope
    assert len(errors) == 6 * LAYERS + 1 + 1  # every norm's weight, and all of them together
    _liger_no_worse_than_own_bf16(losses, errors)


@RunIf(gpus=1, liger=True)
def test_liger_on_gemma4_matches_the_models_own_ops(compose_cfg):
    """Gemma 4 E4B at real width (4 layers, 2 sharing KV, per-layer embeddings): Liger's RMSNorm and GeGLU in
    every scaled norm and MLP (its RoPE does not fit Gemma 4's; the model's own stays), the loss and the norms'
    gradients as close to the fp32 reference as the model's own bf16 ops."""
    from transformers.models.gemma4 import modeling_gemma4

    norm = modeling_gemma4.Gemma4RMSNorm
    applied, losses, errors = _own_and_liger_against_fp32(compose_cfg, GEMMA4_E4B)
    assert applied.kind == "liger" and "rms_norm, geglu for gemma4_text" in applied.why
    assert applied.modules["LigerGEGLUMLP"] == 4 and applied.modules["LigerRMSNorm"] > 4 * 4
    assert modeling_gemma4.Gemma4RMSNorm is norm
    _liger_no_worse_than_own_bf16(losses, errors)


@RunIf(gpus=1, liger=True)
def test_loss_curve_fused_vs_torch_ops_gemma3_1b(compose_cfg, tmp_path: Path):
    from gemma_run import run

    data = _data(tmp_path)
    common = ["task=train", *GEMMA3_1B, f"data.train_file={data}",
              "train.max_steps=8", "train.logging_steps=1", "train.save_steps=1000", "train.max_seq_length=512",
              "train.per_device_batch_size=4", "train.gradient_accumulation_steps=2", "lora.dropout=0",
              "train.learning_rate=1e-3", "train.gradient_checkpointing=true", "train.checkpoint_layers=all",
              "train.compile_layers=false"]  # the ops alone: compiled layers would take the model's ops anyway
    curves, results = [], []
    for name in ("none", "liger"):  # none first: nothing of Liger's is left in transformers after a liger run anyway
        results.append(run(compose_cfg([*common, f"train.fused_ops={name}"]), tmp_path / name))
        rows = [json.loads(x) for x in (tmp_path / name / "losses.jsonl").read_text().splitlines()]
        curves.append([r["loss"] for r in rows if "loss" in r])
    ref, fused = results
    assert ref["fused_ops"] == "none" and fused["fused_ops"] == "liger", fused.get("fused_ops_why")
    assert fused["fused_ops_modules"] == {"LigerRMSNorm": 6 * LAYERS + 1, "LigerGEGLUMLP": LAYERS}
    assert ref["checkpointed_layers"] == fused["checkpointed_layers"] == LAYERS
    worst = max(abs(a - b) / abs(a) for a, b in zip(*curves, strict=True))
    print(f"\ngemma3_1b, 2 layers (random) torch ops {curves[0]}\n                   Liger's   {curves[1]}\n"
          f"max relative difference {worst:.2e}; tokens/s {ref.get('tokens_per_second')} -> "
          f"{fused.get('tokens_per_second')}; peak GiB {ref.get('peak_memory_gib')} -> {fused.get('peak_memory_gib')}")
    assert len(curves[0]) == len(curves[1]) == 8 and curves[0][0] != curves[0][-1]
    assert worst < 1e-2


@RunIf(gpus=1)
def test_auto_checkpointing_stays_inside_its_budget(compose_cfg, tmp_path: Path):
    """1B's width with 6 layers (5 sliding, 1 global) at 2048 x 4 tokens inside a 9 GiB cap: beside the weights,
    the loss and one layer's backward, 90% of the cap holds some of the six layers' activations (~1.5 GiB each at
    these tokens), not all, so some layers are checkpointed and some not; the peak stays inside."""
    from gemma_run import run

    data = _data(tmp_path, words=1600, n=24)
    cap, layers = 9, 6
    r = run(compose_cfg(["task=train", "model=gemma3_1b", "model.weights=random",
                         f"model.config.num_hidden_layers={layers}", f"data.train_file={data}",
                         "train.max_steps=3", "train.logging_steps=1", "train.save_steps=1000",
                         "train.max_seq_length=2048", "train.per_device_batch_size=4",
                         "train.gradient_checkpointing=true", "train.checkpoint_layers=auto",
                         f"train.gpu_memory_cap={cap}GiB"]), tmp_path / "auto")
    est = r["checkpoint_estimate"]
    print(f"\nauto: {r['checkpointed_layers']}/{r['decoder_layers']} checkpointed ({r['checkpoint_layers_why']}); "
          f"planned peak {est['planned_peak_bytes'] / 2**30:.2f} GiB, first step "
          f"{est.get('first_step_peak_bytes', 0) / 2**30:.2f} GiB, whole run {r['peak_memory_gib']} GiB; "
          f"layer {est['layer_bytes'] / 2**30:.3f} GiB; {r.get('tokens_per_second')} tokens/s")
    assert r["decoder_layers"] == layers
    assert 0 < r["checkpointed_layers"] < layers  # room for some whole layers, not for all
    assert r["peak_memory_gib"] * 2**30 <= est["usable_bytes"]  # the estimate kept it inside 90% of the cap
