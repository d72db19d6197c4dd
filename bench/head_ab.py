"""gemma3_27b int4 through the fast engine (compiled, recorded, projections stacked), with its output layer in bf16
(quant.lm_head=keep) and in int4 (quant.lm_head=int4), measured in one process in alternation (A B A B A B), so
that a machine's drift or its state after a compile does not decide the comparison.

    . bench/gpu_env.sh && python3 bench/head_ab.py [model]

Per variant: the recorded step replayed back to back (ms), and fast.generate's decode rate for 128 + 128
tokens at batch 1 (tok/s, best of the rounds), as task=bench computes it.
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path

import torch

from gemma_run import compose
from gemma_run.infer import decode_attention, fast
from gemma_run.loading import load, torchao_int4

sys.path.insert(0, str(Path(__file__).parent))
from engine_timing import NEW, generate, replay_ms

ROUNDS = 3


def main() -> int:
    name = sys.argv[1] if len(sys.argv) > 1 else "gemma3_27b"
    cfg = compose([f"model={name}", "model.weights=random", "quant=int4"])
    loaded = load(cfg)
    model = loaded.model
    heads = {"bf16": model.get_output_embeddings()}
    torchao_int4.quantize_output_layer(model, cfg.quant, on_cuda=True)
    heads["int4"] = model.get_output_embeddings()
    fast.fuse_projections(model)
    attention = decode_attention.register()
    ids = torch.randint(10, 1000, (1, 128), device=loaded.input_device)
    mask = torch.ones_like(ids)
    sessions: dict[str, dict] = {}

    def use(head: str) -> None:
        model.set_output_embeddings(heads[head])
        model.__dict__["_gemma_run_sessions"] = sessions.setdefault(head, {})

    def run() -> tuple[float, float]:
        return generate(model, ids, mask, attention=attention, fuse=True)

    compile_s = {}
    for head in heads:
        use(head)
        compile_s[head] = run()[0]
    rows: dict[str, dict[str, list[float]]] = {h: {"replay": [], "tps": []} for h in heads}
    for _ in range(ROUNDS):
        for head in heads:
            use(head)
            rows[head]["tps"].append(run()[1])
            rows[head]["replay"].append(replay_ms(model))
    print(f"\n{name} int4, fast engine (compiled, recorded, stacked projections), batch 1, 128 + {NEW}; "
          f"{ROUNDS} alternating rounds on {torch.cuda.get_device_name()}")
    print("| output layer | recorded step, ms (median) | decode tok/s (best; all) | first run s (compile) |")
    print("|---|---|---|---|")
    for head, r in rows.items():
        print(f"| {head} | {statistics.median(r['replay']):.3f} | {max(r['tps']):.1f}; "
              f"{', '.join(f'{v:.1f}' for v in r['tps'])} | {compile_s[head]:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
