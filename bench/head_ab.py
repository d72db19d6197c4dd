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
import time

import torch

from gemma_run import compose
from gemma_run.infer import decode_attention, fast
from gemma_run.loading import load, torchao_int4

NEW, ROUNDS = 128, 3


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
    kwargs = {"max_new_tokens": NEW, "min_new_tokens": NEW, "do_sample": False, "eos_token_id": [1],
              "pad_token_id": 0}
    sessions: dict[str, dict] = {}

    def use(head: str) -> None:
        model.set_output_embeddings(heads[head])
        model.__dict__["_gemma_run_sessions"] = sessions.setdefault(head, {})

    def generate() -> tuple[float, float]:
        first: list[float] = []

        class Streamer:
            def put(self, value) -> None:
                if not first and value.dim() == 1:
                    first.append(time.perf_counter())

            def end(self) -> None:
                pass

        torch.cuda.synchronize()
        start = time.perf_counter()
        with torch.inference_mode():
            fast.generate(model, ids, mask, kwargs, compile=True, exact=True, graph=True, attention=attention,
                          fuse=True, streamer=Streamer())
        torch.cuda.synchronize()
        end = time.perf_counter()
        return end - start, (NEW - 1) / (end - first[0])

    def replay_ms() -> float:
        [s] = [s for s in model._gemma_run_sessions.values() if s.replay is not None]
        torch.cuda.synchronize()
        start = time.perf_counter()
        with torch.inference_mode():
            s.replay_alone(NEW)
        torch.cuda.synchronize()
        return (time.perf_counter() - start) / NEW * 1e3

    compile_s = {}
    for head in heads:
        use(head)
        compile_s[head] = generate()[0]
    rows: dict[str, dict[str, list[float]]] = {h: {"replay": [], "tps": []} for h in heads}
    for _ in range(ROUNDS):
        for head in heads:
            use(head)
            rows[head]["tps"].append(generate()[1])
            rows[head]["replay"].append(replay_ms())
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
