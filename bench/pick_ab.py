"""Where a greedy decode step's token is picked, measured in one process in alternation (A B C D A B C D ...), so
that a machine's drift, or a sweep's first job running slower, does not decide the comparison.

    . bench/gpu_env.sh && python3 bench/pick_ab.py [model] [quant]      (default gemma3_4b, none: bf16)

Variants, each a session of the fast engine (compiled, recorded as a CUDA graph, decode attention, stacked
projections) on the same loaded model:
- host: the loop picks after each replayed step (generation.device_pick=false; as sampling runs do);
- with_step / compiled_apart / eager: the step picks on the device (fast.Picker), its pick compiled in one graph
  with the forward, compiled on its own, or run as plain kernels; all inside the one recorded graph (fast.PICK).

Per variant: fast.generate's decode rate for 128 + 128 tokens at batch 1 (tok/s, as task=bench computes it: after
the first token), the recorded step replayed back to back (ms), and one profiled generate's GPU kernel time and
kernel count per token (what the GPU does per token, wherever it was launched from).
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path

import torch

from gemma_run import compose
from gemma_run.infer import decode_attention, fast
from gemma_run.loading import load

sys.path.insert(0, str(Path(__file__).parent))
from engine_timing import NEW, generate, replay_ms

ROUNDS = 4
VARIANTS = ("host", "with_step", "compiled_apart", "eager")


def main() -> int:
    name = sys.argv[1] if len(sys.argv) > 1 else "gemma3_4b"
    quant = sys.argv[2] if len(sys.argv) > 2 else "none"
    loaded = load(compose([f"model={name}", "model.weights=random", f"quant={quant}"]))
    model = loaded.model
    fast.fuse_projections(model)
    attention = decode_attention.register()
    ids = torch.randint(10, 1000, (1, 128), device=loaded.input_device)
    mask = torch.ones_like(ids)
    sessions: dict[str, dict] = {}

    def use(variant: str) -> None:
        fast.PICK = variant if variant != "host" else "with_step"
        model.__dict__["_gemma_run_sessions"] = sessions.setdefault(variant, {})

    def run(variant: str) -> tuple[float, float]:
        return generate(model, ids, mask, attention=attention, fuse=True, pick=variant != "host")

    def profiled(variant: str) -> tuple[float, float]:
        from torch.autograd import DeviceType
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            run(variant)
        kernels = [e for e in prof.events() if e.device_type == DeviceType.CUDA]
        return sum(e.device_time for e in kernels) / 1e3 / NEW, len(kernels) / NEW

    compile_s = {}
    for variant in VARIANTS:
        use(variant)
        compile_s[variant] = run(variant)[0]
    rows: dict[str, dict[str, list[float]]] = {v: {"replay": [], "tps": []} for v in VARIANTS}
    for _ in range(ROUNDS):
        for variant in VARIANTS:
            use(variant)
            rows[variant]["tps"].append(run(variant)[1])
            rows[variant]["replay"].append(replay_ms(model))
    prof = {}
    for variant in VARIANTS:
        use(variant)
        prof[variant] = profiled(variant)
    print(f"\n{name} quant={quant}, fast engine (compiled, recorded, decode attention, stacked projections), batch 1, "
          f"128 + {NEW}; {ROUNDS} alternating rounds on {torch.cuda.get_device_name()}")
    print("| pick | decode tok/s (median; all) | recorded step ms (median) | GPU kernel ms / token (profiled, "
          "prefill included) | kernels / token | first run s |")
    print("|---|---|---|---|---|---|")
    for variant, r in rows.items():
        print(f"| {variant} | {statistics.median(r['tps']):.1f}; {', '.join(f'{v:.1f}' for v in r['tps'])} | "
              f"{statistics.median(r['replay']):.3f} | {prof[variant][0]:.3f} | {prof[variant][1]:.1f} | "
              f"{compile_s[variant]:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
