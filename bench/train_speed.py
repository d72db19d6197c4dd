"""Issue 8's training benchmark on one GPU (H100): the seeds' setup against the fast path, one short table.

    . bench/gpu_env.sh && python3 bench/train_speed.py [NAME ...]   (or: bash bench/gpu_suite.sh trainspeed)

Random-weight gemma3_4b, sequence 2048 x batch 4, LoRA r=16 on every linear layer, gradient checkpointing:
the reference (the seeds' setup: eager attention, the model's full-logits loss, every layer checkpointed, no
DeepSpeed) and the fast path (the defaults: sdpa, Liger's fused loss, compiled decoder layers, every layer
checkpointed, deepspeed=auto) inside a 20 GiB cap (issue 8's memory target), for LoRA and QLoRA; each lever on
its own (train.checkpoint_layers=auto inside the cap and on the whole GPU; layers not compiled, which gives
Liger's fused RoPE/RMSNorm/GeGLU instead); LoRA + ZeRO-3
on one GPU; then gemma3_27b QLoRA at 2048 x 1 inside a 24 GiB cap. Each row is
one `task=bench_train` run (its own process): 2 warm-up steps, then 10 timed (tokens/s per the median step).
Runs are skipped once the whole would pass BUDGET_S (device calls are limited to 10 minutes); NAME arguments
run only the rows whose name contains one of them (e.g. `ckpt` or `QLoRA`), to split the table over several
calls. Writes train_speed.json to $OUT (or bench/results/).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

BUDGET_S = 530
MODEL_4B = ["model=gemma3_4b", "model.weights=random", "train.max_seq_length=2048", "train.per_device_batch_size=4",
            "train.gradient_checkpointing=true", "lora.r=16", "task.steps=10", "task.warmup_steps=2"]
# the seeds' setup; checkpoint_layers/fused_ops are pinned so the reference stays what it was
REFERENCE = ["train.attn_implementation=eager", "train.loss_kernel=none", "lora.fp32_embeddings=true", "deepspeed=none",
             "train.checkpoint_layers=all", "train.fused_ops=none", "train.compile_layers=false"]
CAP = "train.gpu_memory_cap=20GiB"  # issue 8: peak <= 20 GiB (and the bound train.checkpoint_layers=auto plans in)
AUTO = "train.checkpoint_layers=auto"
FAST = "4B LoRA fast (20 GiB)"
# name, overrides, the row it is compared with, time limit (s)
RUNS = [
    ("4B LoRA reference (seeds)", [*MODEL_4B, *REFERENCE], None, 150),
    (FAST, [*MODEL_4B, CAP], "4B LoRA reference (seeds)", 120),
    ("4B QLoRA fast (20 GiB)", [*MODEL_4B, "quant=4bit", CAP], "4B LoRA reference (seeds)", 120),
    ("4B LoRA fast, ckpt auto (20 GiB)", [*MODEL_4B, CAP, AUTO], FAST, 120),
    ("4B LoRA fast, dropout 0 (20 GiB)", [*MODEL_4B, CAP, "lora.dropout=0"], FAST, 120),
    ("4B LoRA fast again (20 GiB)", [*MODEL_4B, CAP], FAST, 120),  # run order: the same run again, later
    ("4B LoRA fast, dropout 0 again (20 GiB)", [*MODEL_4B, CAP, "lora.dropout=0"], FAST, 120),
    ("4B LoRA fast, layers not compiled (20 GiB)", [*MODEL_4B, CAP, "train.compile_layers=false"], FAST, 120),
    ("4B QLoRA fast, layers not compiled (20 GiB)", [*MODEL_4B, CAP, "quant=4bit", "train.compile_layers=false"],
     "4B LoRA reference (seeds)", 120),
    ("4B LoRA fast, whole GPU, ckpt auto", [*MODEL_4B, AUTO], FAST, 120),
    # under DeepSpeed auto checkpoints every layer: compared with the plain run that does the same
    ("4B LoRA ZeRO-3 fast", [*MODEL_4B, "deepspeed=zero3"], FAST, 150),
    ("27B QLoRA fast, 24 GiB cap", ["model=gemma3_27b", "model.weights=random", "quant=4bit",
                                    "train.max_seq_length=2048", "train.per_device_batch_size=1",
                                    "train.gradient_checkpointing=true", "train.gpu_memory_cap=24GiB",
                                    "task.steps=4", "task.warmup_steps=2"], None, 240),
    ("4B QLoRA reference (seeds)", [*MODEL_4B, *REFERENCE, "quant=4bit"], None, 150),
    ("4B LoRA ZeRO-3 reference (seeds)", [*MODEL_4B, *REFERENCE[:3], *REFERENCE[4:], "deepspeed=zero3"], None, 150),
]


def run_one(name: str, overrides: list[str], limit: int, work: Path) -> dict:
    run_dir = work / name.replace(" ", "_").replace(",", "").replace("(", "").replace(")", "")
    cmd = [sys.executable, "-m", "gemma_run.cli", "task=bench_train", *overrides, f"hydra.run.dir={run_dir}"]
    start = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=limit)
    except subprocess.TimeoutExpired:
        return {"name": name, "error": f"timed out after {limit} s"}
    (work / f"{run_dir.name}.log").write_text(proc.stdout + proc.stderr)
    result_file = run_dir / "result.json"
    result = json.loads(result_file.read_text()) if result_file.is_file() else {}
    if proc.returncode != 0 or result.get("status") != "ok":
        error = result.get("error") or (proc.stderr.strip().splitlines() or ["?"])[-1]
        return {"name": name, "error": str(error)[:200], "wall_s": round(time.perf_counter() - start, 1)}
    return {"name": name, **result, "wall_s": round(time.perf_counter() - start, 1)}


def fmt(row: dict, rows: dict[str, dict], versus: str | None) -> str:
    if "error" in row:
        return f"| {row['name']} | failed: {row['error']} | | | | |"
    ref = rows.get(versus) if versus else None
    ratio = f"{row['tokens_per_second'] / ref['tokens_per_second']:.2f}x {versus}" \
        if ref and "error" not in ref else "-"
    mfu = f"{row['mfu']:.1%}" if row.get("mfu") is not None else "-"
    ckpt = f"{row.get('checkpointed_layers')}/{row.get('decoder_layers')}" if row.get("gradient_checkpointing") \
        else "off"
    return (f"| {row['name']} | {row['tokens_per_second']:,.0f} | {ratio} | {mfu} | {row['peak_memory_gib']} | "
            f"{row['loss_kernel']}, {row['attn_implementation']}, zero{row['deepspeed_stage']}, "
            f"{row.get('fused_ops')}, {row.get('compile_layers', 0)}, {ckpt} |")


def main() -> int:
    out = Path(os.environ.get("OUT") or "bench/results")
    work = Path("/tmp/train_speed")
    work.mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    begin = time.perf_counter()
    rows: dict[str, dict] = {}
    wanted = sys.argv[1:]
    runs = [r for r in RUNS if not wanted or any(w.lower() in r[0].lower() for w in wanted)]
    for name, overrides, _versus, limit in runs:
        left = BUDGET_S - (time.perf_counter() - begin)
        if left < 60:
            rows[name] = {"name": name, "error": "skipped: the time budget is spent"}
            continue
        rows[name] = run_one(name, overrides, int(min(limit, left)), work)
        print(f"{name}: {rows[name].get('tokens_per_second', rows[name].get('error'))} "
              f"({rows[name].get('wall_s', '-')} s)", flush=True)
        if rows[name].get("step_seconds"):
            print(f"  step seconds: {rows[name]['step_seconds']}", flush=True)
    (out / "train_speed.json").write_text(json.dumps(list(rows.values()), indent=1))
    lines = ["| setup | tokens/s | vs | MFU | peak GiB | loss, attention, ZeRO, fused ops, compiled, checkpointed |",
             "|---|---|---|---|---|---|"]
    lines += [fmt(rows[name], rows, versus) for name, _o, versus, _l in runs]
    print("\n".join(lines))
    device = next((r["device"] for r in rows.values() if "device" in r), "?")
    print(f"total {time.perf_counter() - begin:.0f} s; device: {device}")
    return 0 if all("error" not in r for r in rows.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
