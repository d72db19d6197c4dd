"""Training speed and peak memory against the plain-Trainer baseline on one GPU: one table, a process per row.

    python bench/train_speed.py [NAME ...] [--out DIR]        (bash bench/gpu_suite.sh train)

Every row is a preset of gemma_run/conf/experiment/bench/ run by `gemma-run +experiment=bench/PRESET [overrides]`
(task=bench_train: random weights, synthetic text, 2 warm-up steps then the timed ones, tokens/s of the median
step), each in its own process so that peaks and warm caches do not carry from one row to the next:

- 4B LoRA and QLoRA, sequence 2048 x batch 4, with gemma-run's defaults inside a 20 GiB cap, each beside the
  plain Trainer setup a hand-written script uses (bench/train_4b_lora_baseline: eager attention, the full-logits
  loss, no fused or compiled kernels, no DeepSpeed);
- 27B QLoRA, sequence 2048 x batch 1, inside a 24 GiB cap.

NAME arguments run only the rows whose name contains one of them (e.g. `QLoRA`, `27B`); --extra adds overrides
to every row. The runs' dirs and logs go to --out/train_speed/, the rows to --out/train_speed.json. A CPU dry run
of the script itself (tiny model; its figures say nothing about GPUs):

    python bench/train_speed.py 4B --out /tmp/ts --extra model=tiny_gemma3 train.max_seq_length=64 \
        train.per_device_batch_size=2 task.steps=1 task.warmup_steps=1
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

BASELINE_LORA = "4B LoRA, plain Trainer"
BASELINE_QLORA = "4B QLoRA, plain Trainer"
BASELINE_G4 = "Gemma 4 E4B LoRA, plain Trainer"
# name, overrides, the row it is compared with
RUNS = [
    (BASELINE_LORA, ["+experiment=bench/train_4b_lora_baseline"], None),
    ("4B LoRA", ["+experiment=bench/train_4b_lora"], BASELINE_LORA),
    (BASELINE_QLORA, ["+experiment=bench/train_4b_lora_baseline", "quant=4bit"], None),
    ("4B QLoRA", ["+experiment=bench/train_4b_qlora"], BASELINE_QLORA),
    ("27B QLoRA, 24 GiB cap", ["+experiment=bench/train_27b_qlora"], None),
    (BASELINE_G4, ["+experiment=bench/train_4b_lora_baseline", "model=gemma4_e4b"], None),
    ("Gemma 4 E4B LoRA", ["+experiment=bench/train_gemma4_e4b_lora"], BASELINE_G4),
    ("Gemma 4 31B QLoRA, 32 GiB cap", ["+experiment=bench/train_gemma4_31b_qlora"], None),
]


def run_one(name: str, overrides: list[str], work: Path, timeout: float) -> dict:
    run_dir = work / re.sub(r"[^A-Za-z0-9]+", "_", name).strip("_")
    cmd = [sys.executable, "-m", "gemma_run.app.cli", *overrides, f"hydra.run.dir={run_dir}"]
    print("$ gemma-run", " ".join(cmd[3:]), flush=True)
    start = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"name": name, "error": f"timed out after {timeout:.0f} s"}
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "console.log").write_text(proc.stdout + proc.stderr)
    result_file = run_dir / "result.json"
    result = json.loads(result_file.read_text()) if result_file.is_file() else {}
    wall = round(time.perf_counter() - start, 1)
    if proc.returncode != 0 or result.get("status") != "ok":
        error = result.get("error") or (proc.stderr.strip().splitlines() or ["?"])[-1]
        return {"name": name, "error": str(error)[:200], "wall_s": wall}
    return {"name": name, **result, "wall_s": wall}


def fmt(row: dict, rows: dict[str, dict], versus: str | None) -> str:
    if "error" in row:
        return f"| {row['name']} | failed: {row['error']} | | | | | |"
    ref = rows.get(versus) if versus else None
    ratio = "-"
    if ref and "error" not in ref:
        ratio = f"{row['tokens_per_second'] / ref['tokens_per_second']:.2f}x"
        if row.get("peak_memory_gib") and ref.get("peak_memory_gib"):
            ratio += f", {row['peak_memory_gib'] / ref['peak_memory_gib']:.2f}x the memory"
    mfu = f"{row['mfu']:.1%}" if row.get("mfu") is not None else "-"
    mfu_6n = f"{row['mfu_6n']:.1%} of {row['matmul_tflops_measured']:.0f}" if row.get("mfu_6n") is not None else "-"
    ckpt = f"{row.get('checkpointed_layers')}/{row.get('decoder_layers')}" if row.get("gradient_checkpointing") \
        else "off"
    return (f"| {row['name']} | {row['tokens_per_second']:,.0f} | {ratio} | {mfu} | {mfu_6n} | "
            f"{row['peak_memory_gib']} | {row['attn_implementation']}, {row['loss_kernel']}, "
            f"zero{row['deepspeed_stage']}, {row.get('compile_layers', 0)}, {ckpt} |")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("names", nargs="*", help="run only the rows whose name contains one of these")
    ap.add_argument("--out", default=os.environ.get("OUT") or "outputs/bench",
                    help="where train_speed.json and the runs go (default: $OUT, else outputs/bench)")
    ap.add_argument("--timeout", type=float, default=900, help="seconds a row may take")
    ap.add_argument("--extra", nargs="+", default=[], help="overrides added to every row (a CPU dry run: "
                    "--extra model=tiny_gemma3 train.max_seq_length=64 task.steps=1)")
    args = ap.parse_args()
    out = Path(args.out)
    work = out / "train_speed"
    work.mkdir(parents=True, exist_ok=True)
    runs = [r for r in RUNS if not args.names or any(n.lower() in r[0].lower() for n in args.names)]
    begin = time.perf_counter()
    rows: dict[str, dict] = {}
    for name, overrides, _versus in runs:
        rows[name] = run_one(name, [*overrides, *args.extra], work, args.timeout)
        print(f"{name}: {rows[name].get('tokens_per_second', rows[name].get('error'))} tok/s "
              f"({rows[name].get('wall_s', '-')} s)", flush=True)
    (out / "train_speed.json").write_text(json.dumps(list(rows.values()), indent=1))
    lines = ["| setup | tokens/s | vs its baseline | MFU (datasheet) | MFU 6N (of measured TFLOP/s) | peak GiB | "
             "attention, loss, ZeRO, compiled layers, checkpointed |", "|---|---|---|---|---|---|---|"]
    lines += [fmt(rows[name], rows, versus) for name, _o, versus in runs]
    print("\n".join(lines))
    device = next((r["device"] for r in rows.values() if "device" in r), "?")
    print(f"total {time.perf_counter() - begin:.0f} s; device: {device}")
    return 0 if all("error" not in r for r in rows.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
