"""How far each 4-bit format moves a model's greedy tokens: NF4 (what quant=4bit stores) against int4 with group
scales (what quant=int4 stores), each against the same model in bf16.

    python bench/quality_4bit.py [--model gemma3_4b] [--layers 4] [--prompt 128] [--new 128] [--out DIR]

A random-weight model at its real width (``model.weights=random``, cut to ``--layers`` decoder layers unless 0: all
of them) generates ``--new`` greedy tokens in bf16 after a random prompt. Then every Linear weight of the decoder
layers is replaced by its 4-bit round trip (``gemma_run.kernels.gemv4``: NF4 in blocks of 64 with an fp32 absmax,
as bitsandbytes stores it without double quantization; int4 in groups of 128, and of 64, with a scale and a zero,
the convention of torchao's int4), and the model reads the bf16 model's tokens again (teacher-forced). Reported per
format: how often its top-1 token equals the bf16 model's at the generated positions, the mean KL divergence of its
next-token distribution from the bf16 one, and the weights' relative error (of the decoder layers). The output
layer stays bf16, as both quant modes keep it by default, except in the row that quantizes it too
(quant.lm_head=int4). This measures the formats, not the kernels: each kernel equals its own dequantized weights
(tests/test_gemv4.py, tests/test_gemma4_gpu.py). Runs on a CPU or a GPU (the model on ``cuda`` where there is one);
writes quality_4bit.json to --out.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

# name -> (format, group, whether the output layer is quantized too)
ROUND_TRIPS = {"nf4 (quant=4bit), blocks of 64": ("nf4", 64, False),
               "int4 (quant=int4), groups of 128": ("int4", 128, False),
               "int4 (quant=int4 quant.group_size=64), groups of 64": ("int4", 64, False),
               "int4, groups of 128, output layer int4 too (quant=int4 quant.lm_head=int4)": ("int4", 128, True)}


def round_trip(weight, kind: str, group: int, rows: int = 16384):
    """``weight`` (out x in) through its 4-bit format and back, ``rows`` output rows at a time (the packing's
    fp32 temporaries of a whole 262k-row output layer would be many GB)."""
    import torch

    from gemma_run.kernels import gemv4

    def one(w):
        packed = gemv4.pack_nf4(w, group) if kind == "nf4" else gemv4.pack_int4(w, group)
        return gemv4.dequantize(packed).to(weight.dtype)

    return torch.cat([one(weight[i:i + rows]) for i in range(0, weight.shape[0], rows)])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="gemma3_4b")
    ap.add_argument("--layers", type=int, default=4, help="decoder layers (0: the model's own depth)")
    ap.add_argument("--prompt", type=int, default=128, help="prompt tokens (random ids)")
    ap.add_argument("--new", type=int, default=128, help="greedy tokens the bf16 model generates")
    ap.add_argument("--out", default=os.environ.get("OUT") or "outputs/bench")
    args = ap.parse_args()

    import torch
    from omegaconf import OmegaConf

    from gemma_run import compose
    from gemma_run.loading import load

    overrides = [f"model={args.model}", "model.weights=random", "quant=none", "model.dtype=bfloat16",
                 "device_map=single" if torch.cuda.is_available() else "device_map=cpu"]
    cfg = compose(overrides)
    if args.layers:  # a multimodal config keeps its language model's depth in text_config
        text = "model.config.text_config" if OmegaConf.select(cfg, "model.config.text_config") else "model.config"
        cfg = compose([*overrides, f"{text}.num_hidden_layers={args.layers}"])
    loaded = load(cfg)
    model = loaded.model.eval()
    device = next(model.parameters()).device
    torch.manual_seed(0)
    vocab = model.get_input_embeddings().num_embeddings
    prompt = torch.randint(min(100, vocab // 2), min(20000, vocab), (1, args.prompt), device=device)
    with torch.inference_mode():
        seq = model.generate(prompt, max_new_tokens=args.new, min_new_tokens=args.new, do_sample=False)
        at = slice(args.prompt - 1, seq.shape[1] - 1)  # the positions whose next token the model generated
        ref = model(seq).logits[0, at].float().log_softmax(-1)
    wanted = seq[0, args.prompt:]
    assert torch.equal(ref.argmax(-1), wanted), "bf16 teacher-forced argmax differs from its own greedy tokens"
    linears = [m for m in model.model.layers.modules() if isinstance(m, torch.nn.Linear)] \
        if hasattr(model.model, "layers") else \
        [m for m in model.model.language_model.layers.modules() if isinstance(m, torch.nn.Linear)]
    rows = []
    head = model.get_output_embeddings()
    for name, (kind, group, with_head) in ROUND_TRIPS.items():
        if any(m.in_features % group for m in linears):
            print(f"{name}: not measured, the model's layers have inputs that are not a multiple of {group}")
            continue
        saved = []  # the bf16 weights, kept in host memory: a whole 27B fits the GPU once, not twice
        num = den = 0.0
        with torch.no_grad():
            for m in linears:
                w = m.weight.data
                q = round_trip(w, kind, group)
                num += (q.float() - w.float()).pow(2).sum().item()
                den += w.float().pow(2).sum().item()
                saved.append(w.to("cpu", copy=True))
                w.copy_(q)
                del q
            table = head.weight
            if with_head:  # the output layer's own int4 copy; a tied input embedding keeps its table
                head.weight = torch.nn.Parameter(round_trip(table.data, kind, group), requires_grad=False)
        with torch.inference_mode():
            logp = model(seq).logits[0, at].float().log_softmax(-1)
        with torch.no_grad():
            head.weight = table
            for m, w in zip(linears, saved, strict=True):
                m.weight.data.copy_(w)
        rows.append({"format": name, "top1_agreement": round((logp.argmax(-1) == wanted).float().mean().item(), 4),
                     "mean_kl": round(torch.nn.functional.kl_div(logp, ref, log_target=True, reduction="none")
                                      .sum(-1).mean().item(), 5),
                     "weight_relative_error": round((num / den) ** 0.5, 4)})
    print(f"{args.model}, {args.layers or 'all'} layers, random weights, prompt {args.prompt} + {args.new} greedy "
          f"tokens, {device}:")
    print("| format | top-1 agreement with bf16 | mean KL from bf16 | weight relative error |\n|---|---|---|---|")
    for r in rows:
        print(f"| {r['format']} | {r['top1_agreement']:.1%} | {r['mean_kl']} | {r['weight_relative_error']} |")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "quality_4bit.json").write_text(json.dumps({"model": args.model, "layers": args.layers,
                                                       "device": str(device), "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
