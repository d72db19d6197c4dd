"""The fast training path on a GPU (skipped without CUDA): Liger's fused loss against the chunked and the
reference loss on the same tensors, and the loss curve of the fast path (Liger + sdpa) against the seeds'
(full logits + eager) on a random-weight Gemma 3 1B at its real width with two layers (helpers.shapes.GEMMA3_1B),
same data and seed. The whole 1B's speed is the benchmark suite's (bench/gpu_suite.sh train).

    GEMMA_RUN_TEST_CACHE=/tmp/gr-cache python -m pytest tests/test_train_fast_gpu.py -q -s
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from helpers.run_if import RunIf
from helpers.shapes import GEMMA3_1B, GEMMA3_1B_LAYERS

WORDS = "the quick brown fox jumps over the lazy dog a model runs on the GPUs you have".split()


@RunIf(gpus=1, liger=True)
@pytest.mark.parametrize("softcap", [None, 30.0])
def test_liger_matches_reference_and_chunked(softcap):
    import torch

    from gemma_run.training import loss

    assert loss.liger_available(), "liger-kernel must be installed on the GPU machine (.whl)"
    g = torch.Generator(device="cuda").manual_seed(0)
    tokens, hidden_size, vocab = 2048, 1152, 262144  # a Gemma 3 1B batch: the vocabulary is what matters
    labels = torch.randint(0, vocab, (tokens,), device="cuda", generator=g)
    labels[:300] = -100
    out = {}
    for name in ("reference", "chunked", "liger"):
        h = (torch.randn(tokens, hidden_size, device="cuda", generator=g.manual_seed(1)) * 0.5).bfloat16()
        h.requires_grad_()
        w = (torch.randn(vocab, hidden_size, device="cuda", generator=g.manual_seed(2)) * 0.02).bfloat16()
        fn = getattr(loss, name)
        value = fn(h, w, loss.shift_labels(labels[None])[0], softcap=softcap, num_items_in_batch=torch.tensor(3000))
        value.backward()
        out[name] = (value.float().item(), h.grad.float())
    ref_loss, ref_grad = out["reference"]
    for name in ("chunked", "liger"):
        value, grad = out[name]
        rel = (grad - ref_grad).norm() / ref_grad.norm()
        print(f"\n{name}: loss {value:.6f} vs reference {ref_loss:.6f}; relative gradient difference {rel:.2e}")
        assert abs(value - ref_loss) <= 2e-3 * abs(ref_loss)
        assert rel < 2e-2  # bf16 gradients: the reference rounds its logits' gradient to bf16 too


@RunIf(gpus=1, liger=True)
def test_loss_curve_fast_vs_reference_gemma3_1b(compose_cfg, tmp_path: Path):
    from gemma_run import run

    rnd = random.Random(0)
    data = tmp_path / "text.jsonl"
    data.write_text("".join(json.dumps({"text": " ".join(rnd.choices(WORDS, k=400))}) + "\n" for _ in range(64)))
    common = ["task=train", *GEMMA3_1B, f"data.train_file={data}",
              "train.max_steps=8", "train.logging_steps=1", "train.save_steps=1000", "train.max_seq_length=512",
              "train.per_device_batch_size=4", "train.gradient_accumulation_steps=2", "lora.dropout=0",
              "train.learning_rate=1e-3"]
    curves, results = [], []
    reference = ["train.attn_implementation=eager", "train.loss_kernel=none", "train.fused_ops=none",
                 "train.compile_layers=false"]  # the seeds' setup
    for name, extra in (("ref", reference), ("fast", [])):
        results.append(run(compose_cfg([*common, *extra]), tmp_path / name))
        rows = [json.loads(x) for x in (tmp_path / name / "losses.jsonl").read_text().splitlines()]
        curves.append([r["loss"] for r in rows if "loss" in r])
    assert results[1]["loss_kernel"] == "liger" and results[1]["attn_implementation"] == "sdpa"
    # the defaults compile the decoder layers, without graph breaks (which would leave them partly eager)
    assert results[1]["compile_layers"] == GEMMA3_1B_LAYERS  # every decoder layer
    assert results[1]["compile_layers_graph_breaks"] == 0 and results[0]["compile_layers"] == 0
    worst = max(abs(a - b) / abs(a) for a, b in zip(*curves, strict=True))
    print(f"\ngemma3_1b, 2 layers (random) reference {curves[0]}\n                   fast      {curves[1]}\n"
          f"max relative difference {worst:.2e}; peak GiB {results[0].get('peak_memory_gib')} -> "
          f"{results[1].get('peak_memory_gib')}")
    assert len(curves[0]) == len(curves[1]) == 8
    assert worst < 2e-2  # bf16 training: eager vs sdpa and the loss kernels round differently, step by step
