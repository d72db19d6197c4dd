"""Issue 7's 4-bit candidates, kernel by kernel: batch-1 matrix-vector products of gemma3_27b's shapes on a GPU.

    . bench/gpu_env.sh && python3 bench/kernels_4bit.py        (gemlite is tried when it imports)

A 27B decode step is 62 layers of 7 products (q, k, v, o, gate, up, down) plus the lm_head. For each backend the
script quantizes LAYERS copies of one layer's weights (random, so the set is larger than the GPU's L2 cache, as
the real model is), records one pass over them as a CUDA graph (what the engine replays), and reports the time
per layer and the effective bandwidth: the bytes the backend stores per layer divided by that time, against a
device copy measured in the same run. The candidates:

- bf16: cuBLAS (torch.nn.functional.linear), the baseline;
- nf4: bitsandbytes' 4-bit (what quant=4bit loads), blocksize 64, double quant as gemma-run sets it;
- int4: torchao Int4WeightOnlyConfig, tile_packed_to_4d (tinygemm; what quant=int4 loads), group 128;
- gemlite: gemlite's Triton A16W4 kernels (asymmetric int4, group 64/128), if the package imports.

Prints a short table; writes kernels_4bit.json to $OUT (or bench/results/).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

HIDDEN, HEADS, KV_HEADS, HEAD_DIM, FFN = 5376, 32, 16, 128, 21504
SHAPES = {"q": (HEADS * HEAD_DIM, HIDDEN), "k": (KV_HEADS * HEAD_DIM, HIDDEN), "v": (KV_HEADS * HEAD_DIM, HIDDEN),
          "o": (HIDDEN, HEADS * HEAD_DIM), "gate": (FFN, HIDDEN), "up": (FFN, HIDDEN), "down": (HIDDEN, FFN)}
LAYERS = 8  # 8 layers x ~0.4 GB (4-bit) is far beyond the 50 MB L2
REPEATS = 20


def bf16_layer(weights):
    import torch

    return [lambda x, w=w: torch.nn.functional.linear(x, w) for w in weights], sum(w.numel() * 2 for w in weights)


def nf4_layer(weights):
    import bitsandbytes.functional as bf

    fns, size = [], 0
    for w in weights:
        q, state = bf.quantize_4bit(w, blocksize=64, quant_type="nf4", compress_statistics=True)
        size += q.numel() * q.element_size() + state.absmax.numel() * state.absmax.element_size()
        import bitsandbytes as bnb

        fns.append(lambda x, q=q, state=state: bnb.matmul_4bit(x, q.t(), quant_state=state))
    return fns, size


def int4_layer(weights):
    import torch
    from torchao.quantization import Int4WeightOnlyConfig, quantize_

    fns, size = [], 0
    for w in weights:
        lin = torch.nn.Linear(w.shape[1], w.shape[0], bias=False, dtype=torch.bfloat16, device=w.device)
        lin.weight.data.copy_(w)
        quantize_(lin, Int4WeightOnlyConfig(group_size=128, int4_packing_format="tile_packed_to_4d"))
        qw = lin.weight
        size += sum(t.numel() * t.element_size() for t in (qw.qdata, qw.scale_and_zero))
        fns.append(lin)
    return fns, size


def gemlite_layer(weights, group: int):
    import gemlite
    import torch

    fns, size = [], 0
    for w in weights:
        n, k = w.shape
        g = w.float().view(n, k // group, group)
        lo, hi = g.amin(-1, keepdim=True), g.amax(-1, keepdim=True)
        scale = ((hi - lo) / 15).clamp(min=1e-8)
        zero = -lo / scale
        wq = (g / scale + zero).round().clamp(0, 15).to(torch.uint8).view(n, k)
        layer = gemlite.helper.A16Wn(device=str(w.device), dtype=torch.bfloat16).from_weights(
            wq, scale.view(n, -1).to(torch.bfloat16), zero.view(n, -1).to(torch.bfloat16), 4, group)
        size += sum(t.numel() * t.element_size() for t in (getattr(layer, a, None) for a in ("W_q", "scales", "zeros"))
                    if torch.is_tensor(t))
        fns.append(layer)
    return fns, size


def time_graph(calls) -> float:
    """Seconds per pass over ``calls`` (one layer's products x LAYERS), replayed as one CUDA graph."""
    import torch

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            for call in calls:
                call()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for call in calls:
            call()
    graph.replay()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(REPEATS):
        graph.replay()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / 1000 / REPEATS


def copy_bandwidth() -> float:
    import torch

    a = torch.empty(2 * 2**30, dtype=torch.uint8, device="cuda")
    b = torch.empty_like(a)
    b.copy_(a)
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(10):
        b.copy_(a)
    end.record()
    torch.cuda.synchronize()
    return 2 * a.numel() * 10 / (start.elapsed_time(end) / 1000)


def main() -> int:
    import torch

    torch.manual_seed(0)
    bw = copy_bandwidth()
    x = torch.randn(1, HIDDEN, dtype=torch.bfloat16, device="cuda")
    x_ffn = torch.randn(1, FFN, dtype=torch.bfloat16, device="cuda")
    x_o = torch.randn(1, HEADS * HEAD_DIM, dtype=torch.bfloat16, device="cuda")
    backends = [("bf16 cuBLAS", bf16_layer), ("nf4 bitsandbytes", nf4_layer), ("int4 torchao tinygemm", int4_layer)]
    try:
        import gemlite  # noqa: F401

        backends += [("int4 gemlite g64", lambda w: gemlite_layer(w, 64)),
                     ("int4 gemlite g128", lambda w: gemlite_layer(w, 128))]
    except Exception as e:
        print(f"gemlite not tried: {type(e).__name__}: {e}")
    rows = []
    for name, make in backends:
        try:
            fns, size, inputs = [], 0, []
            for _ in range(LAYERS):
                weights = [torch.randn(*SHAPES[k], dtype=torch.bfloat16, device="cuda") * 0.02 for k in SHAPES]
                layer, nbytes = make(weights)
                del weights
                fns += layer
                size += nbytes
                inputs += [x, x, x, x_o, x, x, x_ffn]
            seconds = time_graph([lambda f=f, i=i: f(i) for f, i in zip(fns, inputs, strict=True)]) / LAYERS
            per_layer = size / LAYERS
            rows.append({"backend": name, "ms_per_layer": round(seconds * 1e3, 4),
                         "mb_per_layer": round(per_layer / 1e6, 1), "gb_per_s": round(per_layer / seconds / 1e9, 1),
                         "of_copy_bw": round(per_layer / seconds / bw, 3), "ms_62_layers": round(seconds * 62e3, 2)})
        except Exception as e:
            rows.append({"backend": name, "error": f"{type(e).__name__}: {str(e)[:160]}"})
        del fns
        torch.cuda.empty_cache()
    print(f"\nbatch-1 products of one gemma3_27b layer (q k v o gate up down), {LAYERS} layers replayed as a CUDA "
          f"graph; copy bandwidth {bw / 1e9:.0f} GB/s on {torch.cuda.get_device_name()}")
    print("| backend | ms / layer | MB / layer | GB/s | of copy bandwidth | 62 layers, ms |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        if "error" in r:
            print(f"| {r['backend']} | failed: {r['error']} | | | | |")
        else:
            print(f"| {r['backend']} | {r['ms_per_layer']} | {r['mb_per_layer']} | {r['gb_per_s']} | "
                  f"{r['of_copy_bw']:.1%} | {r['ms_62_layers']} |")
    save("kernels_4bit.json", bw, rows)
    return 0


def save(name: str, bw: float, rows: list[dict]) -> None:
    """The rows, the copy bandwidth and the stack, as JSON in $OUT (or bench/results/)."""
    import torch

    out = Path(os.environ.get("OUT") or Path(__file__).parent / "results")
    out.mkdir(parents=True, exist_ok=True)
    (out / name).write_text(json.dumps({"copy_bandwidth": bw, "device": torch.cuda.get_device_name(),
                                        "torch": torch.__version__, "rows": rows}, indent=1))


if __name__ == "__main__":
    sys.exit(main())
