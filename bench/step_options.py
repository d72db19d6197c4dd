"""Probe (GPU): which inductor options make the fast engine's recorded decode step faster (issue 7's bf16 gap).

    . bench/gpu_env.sh && python3 bench/step_options.py [model] [variant ...]

The engine's step as it runs by default (random model in bf16, fused projections, the decode attention, the
compile options of ``fast.compile_options``), compiled with each variant's extra inductor options, recorded as a
CUDA graph and replayed back to back for 128 steps (batch 1, 128-token prompt, cache of 256): ms per step, the
fraction of the bytes-per-step limit against a device copy measured in the same process, and the compile time.
A batch-1 step is ~10 small kernels a layer; the variants try to shorten the gaps between them:

- ``base``: the engine's options;
- ``pdl``: + ``triton.enable_pdl`` (programmatic dependent launch on Hopper: a kernel's prologue overlaps the
  previous kernel's tail);
- ``combo``: + ``combo_kernels`` (independent kernels, e.g. the query's and key's norms, merged into one launch);
- ``pdl_combo``: both.
"""

from __future__ import annotations

import sys
import time

import torch

from gemma_run import compose
from gemma_run.bench.bandwidth import measure
from gemma_run.infer import decode_attention, fast
from gemma_run.infer.graph import Replay
from gemma_run.loading import load

STEPS = 128
VARIANTS = {"base": {}, "pdl": {"triton.enable_pdl": True}, "combo": {"combo_kernels": True},
            "pdl_combo": {"triton.enable_pdl": True, "combo_kernels": True}}


def main() -> int:
    name = sys.argv[1] if len(sys.argv) > 1 else "gemma3_4b"
    wanted = sys.argv[2:] or list(VARIANTS)
    loaded = load(compose([f"model={name}", "model.weights=random"]))
    model = loaded.model
    fast.fuse_projections(model)
    attention = decode_attention.register()
    configs = decode_attention.configs(model)
    layers = model.config.get_text_config().num_hidden_layers
    bandwidth = measure(loaded.input_device, 1 << 30)["bytes_per_second"]
    step_bytes = sum(t.numel() * t.element_size() for t in model.parameters())
    rows = []
    for label in wanted:
        torch._dynamo.reset()
        cache = fast.static_cache(layers, 256)
        mask = torch.ones(1, 256, dtype=torch.long, device="cuda")
        prompt = torch.randint(10, 1000, (1, 128), device="cuda")

        def step(ids, pos, cpos, m, cache=cache):
            out = model(input_ids=ids, position_ids=pos, cache_position=cpos, attention_mask=m,
                        past_key_values=cache, use_cache=True, return_dict=True)
            return out.logits[:, -1, :].float()

        options = {**fast.compile_options(True), **VARIANTS[label]}
        try:
            compiled = torch.compile(step, fullgraph=True, dynamic=False, options=options)
            with torch.inference_mode():
                model(input_ids=prompt, position_ids=torch.arange(128, device="cuda")[None], attention_mask=mask,
                      cache_position=torch.arange(128, device="cuda"), past_key_values=cache, use_cache=True)
                args = (prompt[:, -1:], torch.tensor([[128]], device="cuda"), torch.tensor([128], device="cuda"),
                        mask)
                start = time.perf_counter()

                def run(*a, compiled=compiled):
                    with decode_attention.implementation(configs, attention):
                        return compiled(*a)

                replay = Replay(run, args, shared=(3,), rewind=fast.rewinder(cache))
                torch.cuda.synchronize()
                compile_s = time.perf_counter() - start
                best = float("inf")
                for _ in range(3):
                    cache.reset()
                    torch.cuda.synchronize()
                    t0 = time.perf_counter()
                    for _ in range(STEPS):
                        replay(*replay.inputs)
                    torch.cuda.synchronize()
                    best = min(best, (time.perf_counter() - t0) / STEPS)
        except Exception as e:  # an option this torch lacks, or a failed compile: reported, next variant
            rows.append((label, f"failed: {type(e).__name__}: {str(e).splitlines()[0][:120]}", "", ""))
            continue
        rows.append((label, f"{best * 1e3:.3f}", f"{step_bytes / best / bandwidth:.1%}", f"{compile_s:.1f}"))
        print(f"{label}: {best * 1e3:.3f} ms/step", flush=True)
    print(f"\nrecorded decode step, random {name}, bf16, fused projections, decode attention, batch 1; "
          f"{step_bytes / 1e6:.0f} MB of weights a step, copy {bandwidth / 1e9:.0f} GB/s, torch {torch.__version__}")
    print("| variant | ms / step | of limit (weights only) | compile + record s |")
    print("|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
