"""Probe (GPU): where the fast engine loses time against its own recorded step (issue 7's bf16 gap).

    . bench/gpu_env.sh && python3 bench/engine_profile.py [model] [decode|model] [fused|unfused] [quant]
      (default gemma3_4b, random, bf16; the step's attention: generation.step_attention, default decode;
      projections: generation.fuse_projections, default fused; quant: the quant group, default none)

In one process, on the model the engine runs: (1) ``fast.generate`` for 128 + 128 tokens, batch 1, compiled and
recorded (warm: the first run compiles), timed per token; (2) the recorded step alone, replayed 128 times
back to back; (3) one more generate under torch.profiler: GPU kernel time per token, so the GPU's idle share
of the loop shows, and the host-side ops that cost most. Prints a short table and the profiler's top rows.
"""

from __future__ import annotations

import sys
import time

import torch

from gemma_run import compose
from gemma_run.infer import decode_attention, fast
from gemma_run.loading import load

NEW = 128


def main() -> int:
    name = sys.argv[1] if len(sys.argv) > 1 else "gemma3_4b"
    attention = decode_attention.register() if (sys.argv[2] if len(sys.argv) > 2 else "decode") == "decode" \
        else None
    fuse = (sys.argv[3] if len(sys.argv) > 3 else "fused") == "fused"
    quant = sys.argv[4] if len(sys.argv) > 4 else "none"
    loaded = load(compose([f"model={name}", "model.weights=random", f"quant={quant}"]))
    model = loaded.model
    ids = torch.randint(10, 1000, (1, 128), device=loaded.input_device)
    mask = torch.ones_like(ids)
    kwargs = {"max_new_tokens": NEW, "min_new_tokens": NEW, "do_sample": False, "eos_token_id": [1],
              "pad_token_id": 0}

    def run() -> float:
        torch.cuda.synchronize()
        start = time.perf_counter()
        with torch.inference_mode():
            fast.generate(model, ids, mask, kwargs, compile=True, exact=True, graph=True, attention=attention,
                          fuse=fuse)
        torch.cuda.synchronize()
        return time.perf_counter() - start

    first = run()
    loop = min(run() for _ in range(3))
    [s] = [s for s in model._gemma_run_sessions.values() if s.replay is not None]
    torch.cuda.synchronize()
    start = time.perf_counter()
    with torch.inference_mode():
        s.replay_alone(NEW)
    torch.cuda.synchronize()
    replay_ms = (time.perf_counter() - start) / NEW * 1e3
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        profiled = run()
    from torch.autograd import DeviceType

    gpu_us = sum(e.device_time for e in prof.events() if e.device_type == DeviceType.CUDA)  # kernels, in us
    print(f"\nfast engine on random {name}, quant={quant}, batch 1, 128 + {NEW} tokens, step attention "
          f"{attention or 'model'}, {'fused' if fuse else 'unfused'} projections (first run {first:.1f} s)")
    print("| measure | ms / token |")
    print("|---|---|")
    print(f"| fast.generate, whole loop (prefill included) | {loop / NEW * 1e3:.3f} |")
    print(f"| the recorded step replayed back to back | {replay_ms:.3f} |")
    print(f"| profiled generate: wall | {profiled / NEW * 1e3:.3f} |")
    print(f"| profiled generate: GPU kernels | {gpu_us / 1e3 / NEW:.3f} |")
    print("\nhost ops by self CPU time (profiled run):")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15, max_name_column_width=60))
    print("GPU ops by device time:")
    print(prof.key_averages().table(sort_by="device_time_total", row_limit=25, max_name_column_width=70))
    return 0


if __name__ == "__main__":
    sys.exit(main())
