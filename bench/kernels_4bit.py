"""The 4-bit kernel table: gemma3_27b's batch-1 matrix-vector products, backend by backend, on one CUDA GPU.

    python bench/kernels_4bit.py [--out DIR] [--sweep] [--only TEXT ...]   (the gemlite rows when gemlite
        imports; --sweep: the int4 and NF4 gemv rows at each tiling of a grid; --only: the layer rows whose name
        contains one of the TEXTs)

A 27B decode step is 62 layers of 7 products (q, k, v, o, gate, up, down) plus the output layer. For each
backend the script quantizes LAYERS copies of one layer's random weights (more than the GPU's L2 cache holds, as
the real model is), records one pass over them as a CUDA graph (as the fast engine replays its step) and reports
the time per layer and the effective bandwidth: the bytes the backend stores for a layer over that time, as a
fraction of the device's copy bandwidth (measured as task=bench measures it, in the same run). Rows:

- bf16: cuBLAS (``torch.nn.functional.linear``), what quant=none runs;
- nf4: bitsandbytes' 4-bit as quant=4bit loads it (blocksize 64, double quant);
- int4 as loaded: torchao's tinygemm layout as quant=int4 loads it (in_features padded to a multiple of 1024);
- int4 stacked: the same weights as the fast engine holds them (``gemma_run.infer.engine.fused_projections``: q/k/v and
  gate/up stacked, without the padding), 4 products a layer;
- gemlite 0.6: its Triton A16W4 kernels (asymmetric int4, group 64 and 128; 128 stacked as well);
- gemma-run's Triton kernel (``gemma_run.kernels.gemv4``): int4 group 128 and NF4, stacked as the engine stacks;
- the output layer (262,208 x 5376): bf16 (what quant=int4 keeps) and int4 as quant.lm_head=int4 holds it.

Prints a table; writes kernels_4bit.json to --out.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
from pathlib import Path
from typing import Any

HIDDEN, HEADS, KV_HEADS, HEAD_DIM, FFN, VOCAB = 5376, 32, 16, 128, 21504, 262208
SHAPES = {"q": (HEADS * HEAD_DIM, HIDDEN), "k": (KV_HEADS * HEAD_DIM, HIDDEN), "v": (KV_HEADS * HEAD_DIM, HIDDEN),
          "o": (HIDDEN, HEADS * HEAD_DIM), "gate": (FFN, HIDDEN), "up": (FFN, HIDDEN), "down": (HIDDEN, FFN)}
INPUT = {"q": "hidden", "k": "hidden", "v": "hidden", "o": "attention", "gate": "hidden", "up": "hidden",
         "down": "mlp"}  # which activation each product reads
STACKED = (("q", "k", "v"), ("o",), ("gate", "up"), ("down",))  # the fast engine's products of one layer
LAYERS = 8  # 8 layers x ~0.22 GB (4-bit) is far beyond a 50-60 MB L2 cache
REPEATS = 20
DEPTH = 62  # gemma3_27b's decoder layers

Products = list[tuple[Any, str]]  # (callable on an activation, the activation's name)


def stored_bytes(modules: list[Any]) -> int:
    """Bytes a module stores: torchao's int4 weights count their packed data and scales, others every tensor."""
    total = 0
    for module in modules:
        for t in [*module.parameters(), *module.buffers()]:
            parts = [getattr(t, a) for a in ("qdata", "scale_and_zero") if hasattr(t, a)] or [t]
            total += sum(p.numel() * p.element_size() for p in parts)
    return total


def bf16_layer(weights: dict) -> tuple[Products, int]:
    import torch

    products = [(lambda x, w=w: torch.nn.functional.linear(x, w), INPUT[k]) for k, w in weights.items()]
    return products, sum(w.numel() * w.element_size() for w in weights.values())


def nf4_layer(weights: dict) -> tuple[Products, int]:
    import bitsandbytes as bnb
    import bitsandbytes.functional as bf

    products, size = [], 0
    for k, w in weights.items():
        q, state = bf.quantize_4bit(w, blocksize=64, quant_type="nf4", compress_statistics=True)
        size += q.numel() * q.element_size() + state.absmax.numel() * state.absmax.element_size()
        products.append((lambda x, q=q, state=state: bnb.matmul_4bit(x, q.t(), quant_state=state), INPUT[k]))
    return products, size


@functools.cache
def int4_quant_cfg(lm_head: str = "keep") -> Any:
    """The quant group as `quant=int4` composes it."""
    from gemma_run import compose

    return compose(["quant=int4", f"quant.lm_head={lm_head}"]).quant


def int4_linears(weights: dict) -> dict[str, Any]:
    """torchao int4 linears of these weights, quantized as quant=int4 loads them on CUDA."""
    import torch
    from torchao.quantization import quantize_

    from gemma_run.quant.torchao import ao_config

    config = ao_config(int4_quant_cfg(), on_cuda=True)
    out = {}
    for k, w in weights.items():
        linear = torch.nn.Linear(w.shape[1], w.shape[0], bias=False, dtype=w.dtype, device=w.device)
        linear.weight.data.copy_(w)
        quantize_(linear, config)
        out[k] = linear
    return out


def int4_layer(weights: dict) -> tuple[Products, int]:
    linears = int4_linears(weights)
    return [(m, INPUT[k]) for k, m in linears.items()], stored_bytes(list(linears.values()))


def int4_stacked_layer(weights: dict) -> tuple[Products, int]:
    from gemma_run.infer.engine import fused_projections

    linears = int4_linears(weights)
    modules = []
    for names in STACKED:
        group = [linears[n] for n in names]
        if len(group) > 1 and not fused_projections.stackable_int4(group):
            raise RuntimeError(f"{'/'.join(names)} cannot be stacked in this torchao version's layout")
        modules.append((fused_projections.stack_int4(group) if len(group) > 1 else group[0], INPUT[names[0]]))
    return modules, stored_bytes([m for m, _ in modules])


def gemlite_layer(weights: dict, group: int, stacked: bool = False) -> tuple[Products, int]:
    import gemlite
    import torch

    names = STACKED if stacked else tuple((k,) for k in weights)
    products, size = [], 0
    for parts in names:
        w = torch.cat([weights[n] for n in parts])
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
        products.append((layer, INPUT[parts[0]]))
    return products, size


def gemv4_layer(weights: dict, kind: str, config: Any = None, lanes: bool = False) -> tuple[Products, int]:
    """gemma-run's own 4-bit kernel (gemma_run.kernels.gemv4), the layer's products stacked as the fast engine
    stacks them: int4 with group 128, or NF4 with bitsandbytes' blocks of 64; ``config``: its KernelConfig
    (default: the kernel's); ``lanes``: the weights in lane order (gemv4.to_lanes, word-wise kernel only)."""
    import torch

    from gemma_run.kernels import gemv4

    config = config or gemv4.DEFAULT_CONFIG
    products, size = [], 0
    for parts in STACKED:
        w = torch.cat([weights[n] for n in parts])
        packed = gemv4.pack_int4(w, 128) if kind == "int4" else gemv4.pack_nf4(w, 64)
        packed = gemv4.to_lanes(packed) if lanes else packed
        products.append((lambda x, p=packed: gemv4.gemv(x, p, config=config), INPUT[parts[0]]))
        size += packed.nbytes()
    return products, size


def int4_output_layer(head: Any) -> Any:
    """The output layer quantized by quant.lm_head=int4's own code (gemma_run.quant.torchao)."""
    import torch

    from gemma_run.quant.torchao import quantize_output_layer

    class Model(torch.nn.Module):  # the two methods quantize_output_layer uses
        def __init__(self, linear: Any) -> None:
            super().__init__()
            self.lm_head = linear

        def get_output_embeddings(self) -> Any:
            return self.lm_head

        def set_output_embeddings(self, module: Any) -> None:
            self.lm_head = module

    linear = torch.nn.Linear(HIDDEN, VOCAB, bias=False, device="meta")  # no second copy of the 2.8 GB table
    linear.weight = torch.nn.Parameter(head, requires_grad=False)
    model = Model(linear)
    quantize_output_layer(model, int4_quant_cfg(lm_head="int4"), on_cuda=True)
    return model.lm_head


def time_graph(calls: list[Any]) -> float:
    """Seconds per pass over ``calls``, replayed as one CUDA graph."""
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


def row(name: str, products: int, seconds: float, nbytes: float, bandwidth: float, layer: bool) -> dict:
    return {"backend": name, "products": products, "ms": round(seconds * 1e3, 4), "mb": round(nbytes / 1e6, 1),
            "gb_per_s": round(nbytes / seconds / 1e9, 1), "of_copy_bw": round(nbytes / seconds / bandwidth, 3),
            f"ms_{DEPTH}_layers": round(seconds * DEPTH * 1e3, 2) if layer else None}


def gemv4_sweep() -> list[tuple[str, Any]]:
    """gemma-run's gemv rows, int4 and NF4, at each tiling of a small grid (KernelConfig: the byte-wise or
    word-wise kernel, the latter with the weights in natural or lane order, outputs and groups per step,
    warps)."""
    import itertools

    from gemma_run.kernels.gemv4 import KernelConfig

    layouts = (("bytes", False, False), ("words", True, False), ("words, lanes", True, True))
    grid = itertools.product(("int4", "nf4"), layouts, (32, 64, 128), (1, 2, 4), (4, 8))
    return [(f"{kind}, gemma-run Triton gemv, stacked, {name} block_n={n} groups={g} warps={w}",
             lambda ws, kind=kind, lanes=lanes, c=KernelConfig(block_n=n, groups=g, num_warps=w, num_stages=3,
                                                               words=words): gemv4_layer(ws, kind, c, lanes))
            for kind, (name, words, lanes), n, g, w in grid]


def layer_rows(bandwidth: float, acts: dict, sweep: bool = False, only: list[str] | None = None) -> list[dict]:
    import torch

    backends = [("bf16, cuBLAS (quant=none)", bf16_layer), ("nf4, bitsandbytes (quant=4bit)", nf4_layer),
                ("int4, torchao as loaded (quant=int4)", int4_layer),
                ("int4, stacked (quant=int4, fast engine)", int4_stacked_layer),
                ("int4, gemma-run Triton gemv, stacked", lambda w: gemv4_layer(w, "int4")),
                ("nf4, gemma-run Triton gemv, stacked", lambda w: gemv4_layer(w, "nf4"))]
    if sweep:
        backends += gemv4_sweep()
    try:
        import gemlite  # noqa: F401

        backends += [("int4, gemlite group 64", lambda w: gemlite_layer(w, 64)),
                     ("int4, gemlite group 128", lambda w: gemlite_layer(w, 128)),
                     ("int4, gemlite group 128, stacked", lambda w: gemlite_layer(w, 128, stacked=True))]
    except Exception as e:
        print(f"gemlite not tried: {type(e).__name__}: {e}")
    rows = []
    for name, make in backends:
        if only and not any(word in name for word in only):
            continue
        calls, size, products = [], 0, []
        try:
            for _ in range(LAYERS):
                weights = {k: torch.randn(*SHAPES[k], dtype=torch.bfloat16, device="cuda") * 0.02 for k in SHAPES}
                products, nbytes = make(weights)
                del weights
                calls += [lambda f=f, x=acts[a]: f(x) for f, a in products]
                size += nbytes
            rows.append(row(name, len(products), time_graph(calls) / LAYERS, size / LAYERS, bandwidth, True))
        except Exception as e:  # one backend failing (a missing package, a kernel refusing a shape) is a row
            rows.append({"backend": name, "error": f"{type(e).__name__}: {str(e)[:160]}"})
        del calls, products
        torch.cuda.empty_cache()
    return rows


def output_rows(bandwidth: float, x: Any) -> list[dict]:
    import torch

    head = torch.randn(VOCAB, HIDDEN, dtype=torch.bfloat16, device="cuda") * 0.02
    rows = [row("output layer, bf16 (cuBLAS)", 1, time_graph([lambda: torch.nn.functional.linear(x, head)]),
                head.numel() * head.element_size(), bandwidth, False)]
    try:
        int4 = int4_output_layer(head)
        rows.append(row("output layer, int4 (quant.lm_head=int4)", 1, time_graph([lambda: int4(x)]),
                        stored_bytes([int4]), bandwidth, False))
    except Exception as e:
        rows.append({"backend": "output layer, int4 (quant.lm_head=int4)", "error": f"{type(e).__name__}: {e}"})
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=os.environ.get("OUT") or "outputs/bench",
                    help="where kernels_4bit.json goes (default: $OUT, else outputs/bench)")
    ap.add_argument("--sweep", action="store_true",
                    help="add gemma-run's int4 and NF4 gemv at each KernelConfig of a small grid (108 more rows)")
    ap.add_argument("--only", nargs="+", metavar="TEXT",
                    help="only the layer rows whose backend name contains one of these (e.g. 'words, lanes' cuBLAS)")
    args = ap.parse_args()
    import torch

    from gemma_run.bench import bandwidth

    if not torch.cuda.is_available():
        print("kernels_4bit.py needs a CUDA GPU", file=sys.stderr)
        return 2
    torch.manual_seed(0)
    bw = bandwidth.measure("cuda", 2**30)["bytes_per_second"]
    acts = {"hidden": torch.randn(1, HIDDEN, dtype=torch.bfloat16, device="cuda"),
            "attention": torch.randn(1, HEADS * HEAD_DIM, dtype=torch.bfloat16, device="cuda"),
            "mlp": torch.randn(1, FFN, dtype=torch.bfloat16, device="cuda")}
    rows = layer_rows(bw, acts, args.sweep, args.only) + output_rows(bw, acts["hidden"])
    device = torch.cuda.get_device_name()
    print(f"\nbatch-1 products of gemma3_27b: one layer (q k v o gate up down; {LAYERS} layers replayed as a CUDA "
          f"graph) and the output layer; copy bandwidth {bw / 1e9:,.0f} GB/s on {device}, torch {torch.__version__}")
    print(f"| backend | products | ms (a layer, or the output layer) | MB read | GB/s | of copy bandwidth | "
          f"{DEPTH} layers, ms |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        if "error" in r:
            print(f"| {r['backend']} | failed: {r['error']} | | | | | |")
        else:
            layers = r[f"ms_{DEPTH}_layers"]
            print(f"| {r['backend']} | {r['products']} | {r['ms']} | {r['mb']} | {r['gb_per_s']:,} | "
                  f"{r['of_copy_bw']:.1%} | {'' if layers is None else layers} |")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "kernels_4bit.json").write_text(json.dumps({"copy_bandwidth": bw, "device": device,
                                                       "torch": torch.__version__, "rows": rows}, indent=1))
    return 0 if all("error" not in r for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
