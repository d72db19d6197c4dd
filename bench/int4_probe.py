"""Probe (GPU): torchao int4 weight-only layouts under the fast engine on a random gemma3_4b, before the quant
group grows an int4 option: decode tok/s at batch 1 for each layout, and compile time. Prints one table."""

from __future__ import annotations

import sys
import time

import torch

from gemma_run import compose
from gemma_run.infer import fast
from gemma_run.loading import load


def main() -> None:
    from torchao.quantization import Int4WeightOnlyConfig, quantize_

    model_name = sys.argv[1] if len(sys.argv) > 1 else "gemma3_4b"
    cfg = compose([f"model={model_name}", "model.weights=random"])
    loaded = load(cfg)
    model, tok = loaded.model, loaded.tokenizer
    quantize_(model, Int4WeightOnlyConfig(group_size=128, int4_packing_format="tile_packed_to_4d"),
              filter_fn=lambda m, name: isinstance(m, torch.nn.Linear) and "lm_head" not in name)
    torch.cuda.empty_cache()
    print("int4 bytes on cuda:", torch.cuda.memory_allocated() / 2**30, "GiB", flush=True)
    ids = torch.randint(10, 1000, (1, 128), device="cuda")
    mask = torch.ones_like(ids)
    kwargs = {"max_new_tokens": 128, "min_new_tokens": 128, "do_sample": False, "eos_token_id": [1],
              "pad_token_id": 0}
    rows = []
    for compile_ in (True,):
        t = time.perf_counter()
        fast.generate(model, ids, mask, kwargs, compile=compile_)
        torch.cuda.synchronize()
        warm = time.perf_counter() - t
        times = []
        for _ in range(3):
            t = time.perf_counter()
            fast.generate(model, ids, mask, kwargs, compile=compile_)
            torch.cuda.synchronize()
            times.append(time.perf_counter() - t)
        best = min(times)
        rows.append((model_name, "int4 tile_packed_to_4d", compile_, round(warm, 1), round(128 / best, 1)))
    print("model | weights | compiled | first call s | tok/s (128 new, incl. prefill)")
    for r in rows:
        print(" | ".join(str(x) for x in r), flush=True)


if __name__ == "__main__":
    main()
