"""Benchmark (N GPUs): tensor-parallel inference (device_map=tp) against the layer-split pipeline (device_map=balanced).

Both run ``gemma-run task=infer`` on the same random-weight model (built once, on disk: the tensor-parallel loader
shards a checkpoint), the same prompts and greedy settings, through generate() (generation.engine=hf, what a model
spread over GPUs uses either way). balanced runs in one process with the layers spread over the N GPUs (one GPU
works at a time); tp runs N processes under torchrun, each holding a slice of every layer (all GPUs work on every
token, with two all-reduces per layer). Prints one table: decode tokens/s (load excluded), load time, parameter
bytes on the fullest GPU, and how many completions equal the pipeline's (bf16 sums in another order can flip a
near-tie, so a few differences are not a bug; a run of them is).

    python bench/tp_vs_pipeline.py --gpus 2 --model gemma3_4b --batch 1 8
    python bench/tp_vs_pipeline.py --gpus 4 --model gemma3_27b --batch 1 8 --new-tokens 128

The model's heads, KV heads and MLP width must divide by --gpus (gemma3_4b: 8/4 heads -> 2 or 4 GPUs;
gemma3_12b: 16/8 and gemma3_27b: 32/16 -> 2, 4 or 8). The rows go to --out/tp_vs_pipeline-<model>-<gpus>gpu.json
(default: $OUT, else outputs/bench). A CPU dry run of the script itself (gloo, no GPU):

    python bench/tp_vs_pipeline.py --gpus 2 --model tiny_gemma3 --batch 2 --new-tokens 8 \
        --extra model.config.num_attention_heads=4 model.config.num_key_value_heads=2
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

PROMPT = "Write a short story about a lighthouse keeper who finds a message in a bottle. It begins:"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(label: str, overrides: list[str], work: Path, gpus: str) -> tuple[dict, list[dict]]:
    run_dir = work / label
    cmd = [sys.executable, "-m", "gemma_run.app.cli", "task=infer", f"hydra.run.dir={run_dir}", *overrides]
    print("$", " ".join(cmd[2:]), flush=True)
    proc = subprocess.run(cmd, cwd=work, capture_output=True, text=True,
                          env={**os.environ, "CUDA_VISIBLE_DEVICES": gpus})  # the same N GPUs for both modes
    if proc.returncode != 0:
        print(proc.stderr[-4000:], file=sys.stderr)
        raise SystemExit(f"{label} failed (exit {proc.returncode})")
    result = json.loads((run_dir / "result.json").read_text())
    gens = [json.loads(line) for line in (run_dir / "generations.jsonl").read_text().splitlines()]
    return result, gens


def fullest_device_gib(result: dict) -> float:
    """Parameter bytes on the fullest device (GPU; the CPU in a CPU dry run): balanced reports one map, tp one map
    per rank."""
    maps = list(result.get("bytes_per_rank", {}).values()) or [result["bytes_per_device"]]
    sizes = [b for m in maps for d, b in m.items() if d.startswith("cuda")] or [b for m in maps for b in m.values()]
    return max(sizes) / 2**30


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--gpus", type=int, required=True, help="GPUs to use (tp: processes; balanced: GPUs spread over)")
    ap.add_argument("--model", default="gemma3_4b")
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--extra", nargs="*", default=[], help="more overrides for both runs, e.g. model.dtype=bfloat16")
    ap.add_argument("--out", default=os.environ.get("OUT") or "outputs/bench", help="where the JSON goes")
    args = ap.parse_args()
    gpus = ",".join(str(i) for i in range(args.gpus))
    common = [f"model={args.model}", "model.weights=random", "model.random_storage=disk", "generation.engine=hf",
              f"generation.max_new_tokens={args.new_tokens}", "generation.do_sample=false", *args.extra]
    rows = []
    with tempfile.TemporaryDirectory(prefix="tp-bench-") as tmp:
        work = Path(tmp)
        for batch in args.batch:
            prompts = work / f"prompts-{batch}.txt"
            prompts.write_text("".join(f"{PROMPT} ({i})\n" for i in range(batch)))
            each = [*common, f"prompts_file={prompts}", f"batch_size={batch}"]
            pipe, pipe_gens = run(f"balanced-b{batch}", [*each, "device_map=balanced"], work, gpus)
            tp, tp_gens = run(f"tp-b{batch}", [*each, "device_map=tp", "launcher=torchrun",
                                               f"launcher.nproc_per_node={args.gpus}",
                                               f"launcher.master_port={free_port()}"], work, gpus)
            same = sum(a["completion"] == b["completion"] for a, b in zip(pipe_gens, tp_gens, strict=True))
            for mode, r in (("balanced", pipe), ("tp", tp)):
                rows.append({"mode": mode, "gpus": args.gpus, "batch": batch, "new_tokens": r["new_tokens"],
                             "tokens_per_second": r["tokens_per_second"], "load_seconds": r["load_seconds"],
                             "dtype": r["dtype"], "fullest_device_gib": round(fullest_device_gib(r), 4),
                             "same_as_balanced": f"{same}/{batch}" if mode == "tp" else "-"})
    print(f"\n{args.model}, {rows[0]['dtype']}, greedy, {args.new_tokens} new tokens, generate(), {args.gpus} GPUs")
    print("| mode | batch | tok/s | load s | params on fullest device (GiB) | completions = balanced |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['mode']} | {r['batch']} | {r['tokens_per_second']} | {r['load_seconds']} | "
              f"{r['fullest_device_gib']} | {r['same_as_balanced']} |")
    out = Path(args.out) / f"tp_vs_pipeline-{args.model}-{args.gpus}gpu.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(rows, indent=2) + "\n")
    print(f"\nwritten: {out}")


if __name__ == "__main__":
    main()
