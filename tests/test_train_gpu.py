"""QLoRA + ZeRO-3 on a random-weight Gemma 3 4B at its real width with two layers (helpers.shapes.GEMMA3_4B) on
one GPU: it trains every step on full sequences, and prints tokens/s and peak memory (skipped without CUDA).

    GEMMA_RUN_TEST_CACHE=/tmp/gr-cache python -m pytest tests/test_train_gpu.py -q -s

The first run builds the random-weight checkpoint into the cache (the one the other GPU tests of this shape use);
the training itself is 8 steps of 4 x 2048 tokens. The whole 4B's figures (the HF Trainer on the same model, LoRA,
QLoRA and QLoRA + ZeRO-3 on one GPU) are the benchmark suite's (bench/gpu_suite.sh train:QLoRA), written up in
docs/benchmarks.md, "Why the defaults are what they are".
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from helpers.run_if import RunIf
from helpers.runs import run_dirs
from helpers.shapes import GEMMA3_4B

SEQ, BATCH, STEPS = 2048, 4, 8


@RunIf(gpus=1, deepspeed=True, bnb=True)
def test_qlora_zero3_gemma3_4b(cli, tmp_path: Path):
    rnd = random.Random(0)
    words = "the quick brown fox jumps over the lazy dog a model runs on the GPUs you have".split()
    # every record but the first is longer than SEQ (truncated to it), so each step trains on BATCH x SEQ tokens
    rows = [{"text": "short warm-up record"}] + [{"text": " ".join(rnd.choices(words, k=3000))} for _ in range(63)]
    train_file = tmp_path / "text.jsonl"
    train_file.write_text("".join(json.dumps(r) + "\n" for r in rows))
    proc = cli("task=train", *GEMMA3_4B, "quant=4bit", "deepspeed=zero3",
               f"data.train_file={train_file}", f"train.max_seq_length={SEQ}", f"train.per_device_batch_size={BATCH}",
               f"train.max_steps={STEPS}", "train.save_steps=1000", "train.logging_steps=1",
               "train.gradient_checkpointing=true", timeout=290)
    assert proc.returncode == 0, proc.stderr[-4000:]
    [run_dir] = run_dirs(tmp_path)
    r = json.loads((run_dir / "result.json").read_text())
    assert r["status"] == "ok" and r["quantized"] and r["deepspeed_stage"] == 3 and r["dtype"] == "bfloat16"
    assert r["global_step"] == STEPS and r["tokens_seen"] >= STEPS * BATCH * (SEQ - 1)
    print(f"\n| model | setup | seq x batch | tokens/s | peak GiB | train s |\n|---|---|---|---|---|---|\n"
          f"| gemma3_4b, 2 layers (random) | QLoRA nf4 + ZeRO-3, 1 GPU, ckpt | {SEQ} x {BATCH} "
          f"| {r['tokens_per_second']} | {r['peak_memory_gib']} | {r['train_seconds']} |")
    assert r["peak_memory_gib"] < 40  # ~1.4 GiB of weights (the bf16 table); activations of 8k tokens checkpointed
