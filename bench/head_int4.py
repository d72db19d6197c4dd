"""Why was gemma3_27b's int4 output layer slower inside the compiled step than alone? Its product timed alone, as
the engine's module, and compiled with the engine's options, each replayed as a CUDA graph.

    . bench/gpu_env.sh && python3 bench/head_int4.py
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from kernels_4bit import HIDDEN, time_graph

VOCAB = 262208


def main() -> int:
    import torch
    from torchao.quantization import Int4WeightOnlyConfig, quantize_

    from gemma_run.infer import fast, fused_projections

    torch.manual_seed(0)
    x = torch.randn(1, 1, HIDDEN, dtype=torch.bfloat16, device="cuda")
    dense = torch.nn.Linear(HIDDEN, VOCAB, bias=False, dtype=torch.bfloat16, device="cuda")
    q = torch.nn.Linear(HIDDEN, VOCAB, bias=False, dtype=torch.bfloat16, device="cuda")
    q.weight.data.copy_(dense.weight)
    quantize_(q, Int4WeightOnlyConfig(group_size=128, int4_packing_format="tile_packed_to_4d",
                                      set_inductor_config=False))
    single = fused_projections.stack_int4([q])
    opts = fast.compile_options(True)
    rows = []
    for name, mod in (("bf16 Linear", dense), ("torchao int4 Linear (padded)", q), ("stack_int4 (unpadded)", single)):
        with torch.no_grad():
            rows.append((name, "eager", time_graph([lambda m=mod: m(x)])))
            step = torch.compile(lambda t, m=mod: m(t)[:, -1, :].float(), fullgraph=True, dynamic=False,
                                 options=opts)
            step(x)
            rows.append((name, "compiled (engine options), .float()", time_graph([lambda s=step: s(x)])))
    for name, how, seconds in rows:
        print(f"| {name} | {how} | {seconds * 1e3:.3f} ms |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
