"""Peak memory of a random model built in memory (model.weights=random, model.random_storage=memory) against what
the preflight plans for the run, one row per quant.

Each case runs in a fresh process: it composes the run config, plans it as the preflight does
(``inputs.from_cfg`` + ``make_plan``), loads it through ``gemma_run.loading.load`` and reports the peak of the
load. On a GPU the peak is ``torch.cuda.max_memory_allocated`` of the device that holds the weights; on the CPU
it is the rise of the process's peak resident memory (``ru_maxrss``) over its resident memory before the load
(with the libraries the load uses already imported, and glibc returning freed tensors to the system).

    python bench/random_build_peak.py --model gemma3_27b --quant 4bit int4          # on the GPU machine
    python bench/random_build_peak.py --model tiny_gemma3 --quant none 4bit 8bit int4 --set quant.group_size=64

``--set`` passes more overrides to every case (e.g. ``model.config.num_hidden_layers=16``, ``plan.gpus=[24GiB]``).
Columns: planned = the preflight's total for the device (weights, cache, activations, overhead and the build's
transient beyond those); planned load = the planned weights on the device + the build's transient (one unit in
the build dtype), the number to hold the measured peak against; peak = measured during the load; loaded = the
parameter bytes after it. ``--json`` adds one JSON object per case.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import json
import subprocess
import sys
import time

GiB = 2**30


def _rss() -> int:
    """Resident bytes of this process now (Linux)."""
    import os

    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _child_env() -> dict[str, str]:
    """This environment, with glibc's malloc giving every block of 64 KiB or more its own mapping, returned to the
    system when freed: the CPU's resident memory then follows the live tensors, and its peak is theirs (by
    default glibc keeps freed blocks of up to 32 MiB in its heap, which hides or inflates the peak)."""
    import os

    from gemma_run.app import env

    child = dict(os.environ)
    env.export({"MALLOC_MMAP_THRESHOLD_": 65536}, override=False, environ=child)
    return child


def one(model: str, quant: str, extra: list[str]) -> dict:
    """Plan, load and measure one case in this process."""
    import resource

    import torch

    from gemma_run import compose
    from gemma_run.loading import load
    from gemma_run.planning import inputs
    from gemma_run.planning.plan import make_plan

    cfg = compose([f"model={model}", "model.weights=random", "model.random_storage=memory", f"quant={quant}",
                   "device_map=auto", *extra])
    p, _ = inputs.from_cfg(cfg, "infer")
    plan = make_plan(p)  # builds the meta skeleton: transformers and the model's modules are imported here
    for name in ("accelerate", "bitsandbytes", "torchao.quantization"):  # so the CPU peak is not their import
        try:
            importlib.import_module(name)
        except ImportError:
            pass
    gc.collect()
    cuda = torch.cuda.is_available() and bool(p.gpus)
    device = "cuda:0" if cuda else "cpu"
    if cuda:
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    else:
        before = _rss()
    start = time.perf_counter()
    loaded = load(cfg)
    seconds = time.perf_counter() - start
    if cuda:
        peak = torch.cuda.max_memory_allocated() - before
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before
    parts = plan["devices"].get(device, {})
    return {"model": model, "quant": quant, "device": device, "params": plan["params"]["total"],
            "planned": parts.get("total", 0), "planned_weights": parts.get("weights", 0),
            "build": plan.get("random_build_bytes", 0), "peak": peak,
            "loaded": sum(loaded.bytes_per_device.values()), "load_s": round(seconds, 1), "fits": plan["fits"]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="gemma3_27b")
    parser.add_argument("--quant", nargs="+", default=["4bit", "int4"])
    parser.add_argument("--set", nargs="*", default=[], dest="extra", help="more overrides for every case")
    parser.add_argument("--json", action="store_true", help="print one JSON object per case as well")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # a single case, in this process (the runner's child)
    args = parser.parse_args(argv)
    if args.one:
        print("ROW " + json.dumps(one(args.model, args.one, args.extra)), flush=True)
        return 0
    print("| model | quant | device | planned GiB | planned load GiB | peak GiB | loaded GiB | load s | fits |")
    print("|---|---|---|---|---|---|---|---|---|")
    status = 0
    for quant in args.quant:
        out = subprocess.run([sys.executable, __file__, "--model", args.model, "--one", quant,
                              "--set", *args.extra], capture_output=True, text=True, env=_child_env())
        rows = [line[4:] for line in out.stdout.splitlines() if line.startswith("ROW ")]
        if out.returncode or not rows:
            sys.stderr.write(out.stderr[-4000:])
            print(f"| {args.model} | {quant} | failed (exit {out.returncode}): "
                  f"{(out.stderr.strip().splitlines() or ['?'])[-1][:200]} |")
            status = 1
            continue
        r = json.loads(rows[-1])
        print(f"| {r['model']} | {r['quant']} | {r['device']} | {r['planned'] / GiB:.2f} | "
              f"{(r['planned_weights'] + r['build']) / GiB:.2f} | {r['peak'] / GiB:.2f} | "
              f"{r['loaded'] / GiB:.2f} | {r['load_s']} | {r['fits']} |", flush=True)
        if args.json:
            print(json.dumps(r))
    return status


if __name__ == "__main__":
    sys.exit(main())
