"""Probe (GPU): is the copy bandwidth task=bench measures the bandwidth the model's weights are read at?

task=bench's copy probe (1 GiB, after loading) gave ~3,000 GB/s on an H100 with gemma3_4b loaded and ~2,587 GB/s
with gemma3_27b int4 (built in memory, then quantized), on the same kind of machine, in every run; the decode
limit divides by it. This measures, in one process: the probe on a clean device, the model loaded as task=bench
loads it, the probe again (and after emptying the allocator's cache), and a copy of the weights themselves (every
stored tensor of >= 4 MiB, the int4 data inside torchao's tensors included) into fresh memory, against a copy of
fresh tensors of the same sizes.

    . bench/gpu_env.sh && python3 bench/placement_probe.py [model] [quant] [extra overrides ...]
"""

from __future__ import annotations

import sys

import torch

from gemma_run import compose
from gemma_run.bench import bandwidth
from gemma_run.loading import load

MIN_BYTES = 4 * 2**20
ROUNDS = 3


def stored(model: torch.nn.Module) -> list[torch.Tensor]:
    """The plain tensors holding the model's parameters (a tensor subclass's inner tensors), >= MIN_BYTES each."""
    out, seen = [], set()
    for p in model.parameters():
        parts = [p]
        if type(p.data) is not torch.Tensor and hasattr(p.data, "__tensor_flatten__"):
            names, _ = p.data.__tensor_flatten__()
            parts = [getattr(p.data, n) for n in names]
        for t in parts:
            t = t.data if isinstance(t, torch.nn.Parameter) else t
            if t.is_cuda and t.nbytes >= MIN_BYTES and t.data_ptr() not in seen:
                seen.add(t.data_ptr())
                out.append(t)
    return out


def copy_rate(sources: list[torch.Tensor], sink: torch.Tensor) -> float:
    """Read + written bytes per second copying each source's bytes into ``sink`` (best of ROUNDS)."""
    best = float("inf")
    total = sum(s.nbytes for s in sources)
    flats = [s.view(-1).view(torch.uint8) if s.is_contiguous() else s.contiguous().view(-1).view(torch.uint8)
             for s in sources]
    for _ in range(ROUNDS):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for f in flats:
            sink[: f.numel()].copy_(f)
        end.record()
        end.synchronize()
        best = min(best, start.elapsed_time(end) / 1e3)
    return 2 * total / best


def main() -> int:
    name = sys.argv[1] if len(sys.argv) > 1 else "gemma3_27b"
    quant = sys.argv[2] if len(sys.argv) > 2 else "int4"
    extra = sys.argv[3:] if len(sys.argv) > 3 else (["quant.lm_head=int4"] if quant == "int4" else [])
    rows = []

    def probe(label: str) -> None:
        bw = bandwidth.measure("cuda", 2**30)["bytes_per_second"]
        rows.append((label, bw))

    probe("copy probe, clean device (before loading)")
    loaded = load(compose([f"model={name}", "model.weights=random", f"quant={quant}", *extra]))
    probe("copy probe after loading (what task=bench measures)")
    torch.cuda.empty_cache()
    probe("copy probe after torch.cuda.empty_cache()")
    weights = stored(loaded.model)
    total = sum(w.nbytes for w in weights)
    sink = torch.empty(max(w.nbytes for w in weights), dtype=torch.uint8, device="cuda")
    rows.append((f"the weights ({len(weights)} tensors, {total / 1e9:.2f} GB) copied out", copy_rate(weights, sink)))
    fresh = [torch.empty_like(w) for w in weights]
    rows.append(("fresh tensors of the same sizes copied out", copy_rate(fresh, sink)))
    del fresh
    torch.cuda.empty_cache()
    rehomed = [w.clone() for w in weights]  # where a fresh clone of the weights would live
    rows.append(("clones of the weights, made after loading, copied out", copy_rate(rehomed, sink)))
    print(f"\n{name} quant={quant} {' '.join(extra)} on {torch.cuda.get_device_name()}")
    print("| what | GB/s (read + write) |")
    print("|---|---|")
    for label, bw in rows:
        print(f"| {label} | {bw / 1e9:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
