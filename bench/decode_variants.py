"""Probe (GPU): where a compiled decode step's time goes, and which compile settings move it.

On a random model (argv[1], default gemma3_4b) in bf16, for each variant: compile time, ms per step over 128
steps (batch 1, 128-token prompt), the same as a fraction of the bytes-per-step limit, and (profiled) the GPU's
busy time per step, which says whether the step is bound by its kernels or by the host. Then the same for
torchao int4 weight-only (tinygemm layout) on every Linear but lm_head. Prints one table.
"""

from __future__ import annotations

import sys
import time

import torch

from gemma_run import compose
from gemma_run.infer import fast
from gemma_run.loading import load

STEPS = 128


def weights_bytes(model: torch.nn.Module) -> int:
    seen, total = set(), 0
    for t in list(model.parameters()) + list(model.buffers()):
        if t.data_ptr() in seen:
            continue
        seen.add(t.data_ptr())
        inner = getattr(t, "__tensor_flatten__", None)
        if inner is not None:  # torchao subclasses: sum their inner tensors
            names, _ = t.__tensor_flatten__()
            total += sum(getattr(t, n).numel() * getattr(t, n).element_size() for n in names)
        else:
            total += t.numel() * t.element_size()
    return total


def run_variant(model, label: str, options: dict, argmax_inside: bool, profile: bool, math: bool = False) -> dict:
    cache = fast.static_cache(model.config.num_hidden_layers, 512)
    prompt = torch.randint(10, 1000, (1, 128), device="cuda")
    mask = torch.ones(1, 512, dtype=torch.long, device="cuda")

    def step(ids, pos, cpos, m):
        if math:  # sdpa's math path: inductor fuses q.k, softmax and .v itself instead of calling cuDNN
            from torch.nn.attention import SDPBackend, sdpa_kernel

            with sdpa_kernel(SDPBackend.MATH):
                out = model(input_ids=ids, position_ids=pos, cache_position=cpos, attention_mask=m,
                            past_key_values=cache, use_cache=True, return_dict=True)
            logits = out.logits[:, -1, :]
            return logits.argmax(-1) if argmax_inside else logits.float()
        out = model(input_ids=ids, position_ids=pos, cache_position=cpos, attention_mask=m,
                    past_key_values=cache, use_cache=True, return_dict=True)
        logits = out.logits[:, -1, :]
        return logits.argmax(-1) if argmax_inside else logits.float()

    compiled = torch.compile(step, fullgraph=True, dynamic=False, options=options)
    with torch.inference_mode():
        model(input_ids=prompt, position_ids=torch.arange(128, device="cuda")[None], attention_mask=mask,
              cache_position=torch.arange(128, device="cuda"), past_key_values=cache, use_cache=True)
        token = torch.tensor([[5]], device="cuda")
        t = time.perf_counter()
        compiled(token, torch.tensor([[128]], device="cuda"), torch.tensor([128], device="cuda"), mask)
        torch.cuda.synchronize()
        compile_s = time.perf_counter() - t
        positions = torch.arange(129, 129 + STEPS + 16, device="cuda")

        def loop(n: int) -> None:
            nonlocal token
            for i in range(n):
                out = compiled(token, positions[i:i + 1].view(1, 1), positions[i:i + 1], mask)
                token = (out if argmax_inside else out.argmax(-1)).view(1, 1).clone()
        for _ in range(2):
            loop(8)
        torch.cuda.synchronize()
        t = time.perf_counter()
        loop(STEPS)
        torch.cuda.synchronize()
        ms = (time.perf_counter() - t) / STEPS * 1e3
        busy = None
        if profile:
            from torch.profiler import ProfilerActivity
            from torch.profiler import profile as prof

            with prof(activities=[ProfilerActivity.CUDA]) as p:
                loop(16)
                torch.cuda.synchronize()
            kernels = [e for e in p.events() if e.device_type.name == "CUDA"]
            busy = sum(e.device_time for e in kernels) / 16 / 1e3
            top = {}
            for e in kernels:
                top[e.name[:60]] = top.get(e.name[:60], 0) + e.device_time / 16 / 1e3
            for name, v in sorted(top.items(), key=lambda kv: -kv[1])[:8]:
                print(f"    {label}: {v:.3f} ms/step  {name}", flush=True)
    return {"variant": label, "compile_s": round(compile_s, 1), "ms_per_step": round(ms, 3),
            "gpu_busy_ms_per_step": round(busy, 3) if busy else None}


def main() -> None:
    name = sys.argv[1] if len(sys.argv) > 1 else "gemma3_4b"
    loaded = load(compose([f"model={name}", "model.weights=random"]))
    model = loaded.model
    bw = 3.0e12
    rows = []
    exact = {"triton.cudagraphs": True, "emulate_precision_casts": True}
    variants = [  # label, inductor options, argmax in the graph, profile, math attention
        ("cudagraphs, exact casts, math attention", exact, True, True, True),
        ("+ coordinate descent tuning", {**exact, "coordinate_descent_tuning": True}, True, True, True),
    ]
    nbytes = weights_bytes(model)
    for label, options, inside, profile, math in variants:
        row = run_variant(model, label, options, inside, profile, math)
        row["limit_fraction"] = round(nbytes / bw / (row["ms_per_step"] / 1e3), 3)
        rows.append(row)
        print(row, flush=True)
        torch._dynamo.reset()
    from torchao.quantization import Int4WeightOnlyConfig, quantize_

    quantize_(model, Int4WeightOnlyConfig(group_size=128, int4_packing_format="tile_packed_to_4d"),
              filter_fn=lambda m, fqn: isinstance(m, torch.nn.Linear) and "lm_head" not in fqn)
    torch.cuda.empty_cache()
    nbytes = weights_bytes(model)
    for label, options, inside, profile, math in [("int4 tinygemm, math attention", exact, True, True, True)]:
        row = run_variant(model, label, options, inside, profile, math)
        row["limit_fraction"] = round(nbytes / bw / (row["ms_per_step"] / 1e3), 3)
        rows.append(row)
        print(row, flush=True)
    print(f"\n{name}: weights {nbytes / 1e9:.2f} GB (int4 last)")
    print("| variant | compile s | ms/step | GPU busy ms/step | of limit |")
    for r in rows:
        print(f"| {r['variant']} | {r['compile_s']} | {r['ms_per_step']} | {r['gpu_busy_ms_per_step']} | "
              f"{r['limit_fraction']:.1%} |")


if __name__ == "__main__":
    main()
