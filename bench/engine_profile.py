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
from pathlib import Path

import torch

from gemma_run import compose
from gemma_run.infer import decode_attention
from gemma_run.loading import load

sys.path.insert(0, str(Path(__file__).parent))
from engine_timing import NEW, generate, replay_ms


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

    def run() -> float:
        return generate(model, ids, mask, attention=attention, fuse=fuse)[0]

    first = run()
    loop = min(run() for _ in range(3))
    replay = replay_ms(model)
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
    print(f"| the recorded step replayed back to back | {replay:.3f} |")
    print(f"| profiled generate: wall | {profiled / NEW * 1e3:.3f} |")
    print(f"| profiled generate: GPU kernels | {gpu_us / 1e3 / NEW:.3f} |")
    print("\nhost ops by self CPU time (profiled run):")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15, max_name_column_width=60))
    print("GPU ops by device time:")
    print(prof.key_averages().table(sort_by="device_time_total", row_limit=25, max_name_column_width=70))
    return 0


if __name__ == "__main__":
    sys.exit(main())
