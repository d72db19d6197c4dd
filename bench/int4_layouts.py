"""How tinygemm's int4 layout is laid out matters at batch 1: gemma3_27b's products, as quant=int4 loads them and
repacked, kernel by kernel on a GPU.

    . bench/gpu_env.sh && python3 bench/int4_layouts.py

torchao's ``tile_packed_to_4d`` layout pads every weight's in_features to a multiple of 1024 (27B: 5376 -> 6144
for q/k/v/gate/up, 14% more bytes to read there), though tinygemm's kernel only needs a multiple of
inner_k_tiles x 16 (128); its packed weight is tiled in blocks of 8 output rows, so sibling projections (q/k/v,
gate/up) can be stacked into one product. For each variant the script quantizes LAYERS copies of one layer's
weights, records one pass as a CUDA graph and reports time per layer and bytes read / time against a device copy
of the same run; then the lm_head (262,208 x 5376) in bf16 and in int4. Each repacked variant's output is checked
against torchao's own product on the same weights (max |diff| / max |ref|).

Prints a table; writes int4_layouts.json to $OUT (or bench/results/).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from kernels_4bit import (
    FFN,
    HEAD_DIM,
    HEADS,
    HIDDEN,
    SHAPES,
    copy_bandwidth,
    gemlite_layer,
    int4_layer,
    save,
    time_graph,
)

LAYERS = 8
GROUP = 128
VOCAB = 262208
FUSED = (("q", "k", "v"), ("o",), ("gate", "up"), ("down",))


def quantize(w, inner_k_tiles: int):
    """(packed, scale_and_zero) of tinygemm for a bf16 [N, K] weight, K not padded."""
    import torch
    from torchao.quantization.quant_primitives import (
        MappingType,
        _choose_qparams_affine_tinygemm,
        _quantize_affine_tinygemm,
    )
    from torchao.quantization.utils import pack_tinygemm_scales_and_zeros

    block = (1, GROUP)
    scale, zero = _choose_qparams_affine_tinygemm(w, MappingType.ASYMMETRIC, block, torch.int32, 0, 15,
                                                  scale_dtype=w.dtype, zero_point_dtype=w.dtype)
    q = _quantize_affine_tinygemm(w, block, scale, zero, torch.int32, quant_min=0, quant_max=15)
    q = (q[:, ::2] << 4 | q[:, 1::2]).to(torch.uint8).contiguous()
    packed = torch.ops.aten._convert_weight_to_int4pack(q, inner_k_tiles)
    sz = pack_tinygemm_scales_and_zeros(scale.reshape(w.shape[0], -1), zero.reshape(w.shape[0], -1), w.dtype)
    return packed, sz


def tinygemm_layer(weights: dict, inner_k_tiles: int, fused: bool):
    import torch

    groups = FUSED if fused else tuple((k,) for k in SHAPES)
    fns, size = [], 0
    for names in groups:
        w = torch.cat([weights[n] for n in names])
        packed, sz = quantize(w, inner_k_tiles)
        size += packed.numel() * 4 + sz.numel() * 2
        fns.append((names, lambda x, p=packed, s=sz: torch.ops.aten._weight_int4pack_mm(x, p, GROUP, s)))
    return fns, size


def main() -> int:
    import torch

    torch.manual_seed(0)
    bw = copy_bandwidth()
    inputs = {"q": torch.randn(1, HIDDEN, dtype=torch.bfloat16, device="cuda")}
    inputs.update(k=inputs["q"], v=inputs["q"], gate=inputs["q"], up=inputs["q"],
                  o=torch.randn(1, HEADS * HEAD_DIM, dtype=torch.bfloat16, device="cuda"),
                  down=torch.randn(1, FFN, dtype=torch.bfloat16, device="cuda"))
    variants = [("torchao as loaded (K padded to 1024s), 7 products", None, False)]
    for t, f in ((8, False), (8, True), (4, True), (2, True)):
        products = "4 products (q/k/v, gate/up stacked)" if f else "7 products"
        variants.append((f"tinygemm K unpadded, inner_k_tiles={t}, {products}", t, f))
    variants.append(("gemlite 0.6 g128, 4 products (q/k/v, gate/up stacked)", "gemlite", True))
    rows = []
    for name, tiles, fused in variants:
        calls, size, check = [], 0, None
        try:
            for layer in range(LAYERS):
                weights = {k: torch.randn(*SHAPES[k], dtype=torch.bfloat16, device="cuda") * 0.02 for k in SHAPES}
                if tiles is None:
                    fns, nbytes = int4_layer([weights[k] for k in SHAPES])
                    calls += [lambda f=f, k=k: f(inputs[k]) for f, k in zip(fns, SHAPES, strict=True)]
                elif tiles == "gemlite":
                    fns, nbytes = gemlite_layer([torch.cat([weights[n] for n in names]) for names in FUSED], GROUP)
                    calls += [lambda f=f, k=names[0]: f(inputs[k]) for f, names in zip(fns, FUSED, strict=True)]
                else:
                    fns, nbytes = tinygemm_layer(weights, tiles, fused)
                    calls += [lambda f=f, k=names[0]: f(inputs[k]) for names, f in fns]
                    if layer == 0:  # against torchao's product of the same weights
                        ref_fns, _ = int4_layer([weights[k] for k in SHAPES])
                        ref = dict(zip(SHAPES, (f(inputs[k]) for f, k in zip(ref_fns, SHAPES, strict=True)),
                                       strict=True))
                        worst = 0.0
                        for names, f in fns:
                            got = f(inputs[names[0]]).float()
                            want = torch.cat([ref[n] for n in names], dim=-1).float()
                            worst = max(worst, float((got - want).abs().max() / want.abs().max()))
                        check = worst
                        del ref_fns, ref
                size += nbytes
                del weights
            seconds = time_graph(calls) / LAYERS
            per_layer = size / LAYERS
            rows.append({"variant": name, "ms_per_layer": round(seconds * 1e3, 4),
                         "mb_per_layer": round(per_layer / 1e6, 1), "gb_per_s": round(per_layer / seconds / 1e9, 1),
                         "of_copy_bw": round(per_layer / seconds / bw, 3),
                         "ms_62_layers": round(seconds * 62e3, 2), "max_rel_diff_vs_torchao": check})
        except Exception as e:
            rows.append({"variant": name, "error": f"{type(e).__name__}: {str(e)[:200]}"})
        del calls
        torch.cuda.empty_cache()
    # the lm_head: bf16 (what quant=int4 keeps) against int4
    x = inputs["q"]
    head = torch.randn(VOCAB, HIDDEN, dtype=torch.bfloat16, device="cuda") * 0.02
    packed, sz = quantize(head, 8)
    for name, call, nbytes in (("lm_head bf16 (cuBLAS)", lambda: torch.nn.functional.linear(x, head), head.numel() * 2),
                               ("lm_head int4 (tinygemm, inner_k_tiles=8)",
                                lambda: torch.ops.aten._weight_int4pack_mm(x, packed, GROUP, sz),
                                packed.numel() * 4 + sz.numel() * 2)):
        seconds = time_graph([call])
        rows.append({"variant": name, "ms_per_layer": round(seconds * 1e3, 4), "mb_per_layer": round(nbytes / 1e6, 1),
                     "gb_per_s": round(nbytes / seconds / 1e9, 1), "of_copy_bw": round(nbytes / seconds / bw, 3),
                     "ms_62_layers": None, "max_rel_diff_vs_torchao": None})
    print(f"\nbatch-1 products of gemma3_27b, {LAYERS} layers replayed as one CUDA graph; copy bandwidth "
          f"{bw / 1e9:.0f} GB/s on {torch.cuda.get_device_name()}, torch {torch.__version__}")
    print("| variant | ms / layer (lm_head: ms) | MB read | GB/s | of copy bandwidth | 62 layers, ms | max rel diff |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        if "error" in r:
            print(f"| {r['variant']} | failed: {r['error']} | | | | | |")
        else:
            diff = "" if r["max_rel_diff_vs_torchao"] is None else f"{r['max_rel_diff_vs_torchao']:.2e}"
            print(f"| {r['variant']} | {r['ms_per_layer']} | {r['mb_per_layer']} | {r['gb_per_s']} | "
                  f"{r['of_copy_bw']:.1%} | {r['ms_62_layers'] or ''} | {diff} |")
    save("int4_layouts.json", bw, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
