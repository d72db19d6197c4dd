"""Planned vs measured GPU memory (task=plan's accuracy), on a real GPU with random-weight models.

For gemma3_4b and gemma3_12b in bf16, 8-bit and 4-bit: memory allocated after loading (through the project's
one loading path, ``gemma_run.loading.load`` on a composed config with model.weights=random), and the peak
during a 128 + 128-token greedy generation; then LoRA and QLoRA training of gemma3_4b (r=16 on every
projection, gradient checkpointing, seq 512, batch 1, AdamW), the peak of the second step (steady state).
Prints planned vs measured and the error. Targets: <= 5% on weights, <= 10% on peaks. Run on the GPU machine:

    GEMMA_RUN_CACHE=/tmp/gr-cache python bench/plan_accuracy.py            # minutes (docs/benchmarks.md)
    python bench/plan_accuracy.py --models gemma3_4b --quants none         # a subset

Random checkpoints are built and saved first (4B ~8.6 GB, 12B ~24 GB under $GEMMA_RUN_CACHE/random/).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import time
from pathlib import Path

GiB = 2**30


def _cfg(model: str, quant: str, cache: str | None):
    from gemma_run import compose

    over = [f"model={model}", "model.weights=random", f"quant={quant}", "device_map=single", "model.dtype=bfloat16",
            "plan.prompt_tokens=128", "generation.max_new_tokens=128"]
    if cache:
        over.append(f"cache_dir={cache}")
    return compose(over)


def _plan(cfg, mode: str, train=None):
    import torch

    from gemma_run.planning import inputs
    from gemma_run.planning.plan import make_plan, with_changes

    p, _ = inputs.from_cfg(cfg, mode)
    p = with_changes(p, gpus=(torch.cuda.mem_get_info(0)[1],), strategy="single", single_device="0")
    if train is not None:
        p = with_changes(p, train=train)
    return make_plan(p)["devices"]["cuda:0"]


def _reset():
    import torch

    gc.collect()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    return torch.cuda.memory_allocated()


def infer_row(model: str, quant: str, cache: str | None) -> dict:
    import torch

    from gemma_run.loading import load

    cfg = _cfg(model, quant, cache)
    planned = _plan(cfg, "infer")
    base = _reset()
    loaded = load(cfg)
    weights = torch.cuda.memory_allocated() - base
    torch.cuda.reset_peak_memory_stats()
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(10, 500, (1, 128), generator=g).to(loaded.input_device)
    start = time.perf_counter()
    with torch.inference_mode():
        out = loaded.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=128,
                                    min_new_tokens=128, do_sample=False, pad_token_id=0)
    seconds = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated() - base
    assert out.shape[1] == 256
    del loaded, out
    _reset()
    return {"case": f"{model} {quant} infer", "planned_weights": planned["weights"], "weights": weights,
            "planned_peak": planned["weights"] + planned["kv_cache"] + planned["activations"], "peak": peak,
            "seconds": round(seconds, 1)}


def train_row(model: str, quant: str, cache: str | None, seq: int = 512) -> dict:
    import torch
    from peft import LoraConfig, get_peft_model

    from gemma_run.loading import load
    from gemma_run.planning.training import TrainSpec

    cfg = _cfg(model, quant, cache)
    spec = TrainSpec(lora=True, lora_r=16, seq_len=seq, batch=1, gradient_checkpointing=True)
    planned = _plan(cfg, "train", spec)
    base = _reset()
    loaded = load(cfg)
    m = loaded.model
    m.train()
    m.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    m.enable_input_require_grads()
    m = get_peft_model(m, LoraConfig(r=16, lora_alpha=32, target_modules=list(spec.target_modules)))
    weights = torch.cuda.memory_allocated() - base
    opt = torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-4)
    ids = torch.randint(10, 500, (1, seq), generator=torch.Generator().manual_seed(0)).to(loaded.input_device)
    # Two steps, the peak read over the second: from then on AdamW's states and the gradients stay allocated
    # through every forward/backward (the steady state the plan describes). The first step's backward runs
    # before AdamW has allocated anything, so its peak is lower than any later step's.
    for step in range(2):
        if step == 1:
            torch.cuda.reset_peak_memory_stats()
            start = time.perf_counter()
        loss = m(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=False)
    torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated() - base
    del loaded, m, opt, loss
    _reset()
    return {"case": f"{model} {'QLoRA' if quant != 'none' else 'LoRA'} step", "planned_weights": planned["weights"],
            "weights": weights, "planned_peak": sum(v for k, v in planned.items()
                                                    if k not in ("overhead", "total", "capacity")),
            "peak": peak, "seconds": round(seconds, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["gemma3_4b", "gemma3_12b"])
    ap.add_argument("--quants", nargs="+", default=["none", "8bit", "4bit"])
    ap.add_argument("--no-train", action="store_true")
    ap.add_argument("--cache", default=None, help="cache_dir for the random checkpoints (default: the config's)")
    ap.add_argument("--json", default=str(Path(os.environ.get("OUT") or "outputs/bench") / "plan_accuracy.json"),
                    help="where the rows go (default: $OUT/plan_accuracy.json, else outputs/bench/)")
    args = ap.parse_args()

    from gemma_run.app.api import setup

    setup()
    rows = []
    for model in args.models:
        for quant in args.quants:
            rows.append(infer_row(model, quant, args.cache))
            _print(rows[-1])
    if not args.no_train:
        for quant in ("none", "4bit"):
            rows.append(train_row("gemma3_4b", quant, args.cache))
            _print(rows[-1])
    import torch

    print(f"\nplanned vs measured on {torch.cuda.get_device_name()} (err = (plan - measured) / measured)")
    print("| case | weights plan GiB | measured | err | peak plan GiB | measured | err |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['case']} | {r['planned_weights'] / GiB:.2f} | {r['weights'] / GiB:.2f} | "
              f"{_err(r['planned_weights'], r['weights'])} | {r['planned_peak'] / GiB:.2f} | {r['peak'] / GiB:.2f} | "
              f"{_err(r['planned_peak'], r['peak'])} |")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    with open(args.json, "w") as f:
        json.dump(rows, f, indent=2)


def _err(planned: int, measured: int) -> str:
    return f"{100 * (planned - measured) / measured:+.1f}%" if measured else "-"


def _print(r: dict) -> None:
    print(f"{r['case']}: weights {r['weights'] / GiB:.3f} GiB (plan {r['planned_weights'] / GiB:.3f}), "
          f"peak {r['peak'] / GiB:.3f} GiB (plan {r['planned_peak'] / GiB:.3f}), {r['seconds']} s", flush=True)


if __name__ == "__main__":
    main()
