"""One rank of the all-reduce probe: ``python -m gemma_run.doctor.allreduce --rank R --world N --port P``.

Run as N separate processes (one per GPU) by :func:`gemma_run.doctor.gpus.allreduce_probe`, the way DDP and
DeepSpeed run, so the NCCL variables in effect (NCCL_P2P_DISABLE, ...) are the ones tested. Rank 0 prints one
JSON line: the value check, the time of one all-reduce and the bus bandwidth (nccl-tests' definition).
``--backend gloo`` runs the same probe on CPU (used by the CPU tests).
"""

from __future__ import annotations

import argparse
import json
import time
from datetime import timedelta


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--rank", type=int, required=True)
    p.add_argument("--world", type=int, required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--backend", default="nccl", choices=["nccl", "gloo"])
    p.add_argument("--mib", type=float, default=64.0)
    p.add_argument("--iters", type=int, default=5)
    p.add_argument("--timeout", type=float, default=60.0)
    a = p.parse_args(argv)

    import torch
    import torch.distributed as dist

    device = torch.device(f"cuda:{a.rank}") if a.backend == "nccl" else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(a.backend, init_method=f"tcp://127.0.0.1:{a.port}", rank=a.rank, world_size=a.world,
                            timeout=timedelta(seconds=a.timeout))
    numel = max(1, int(a.mib * 2**20 / 4))
    t = torch.empty(numel, dtype=torch.float32, device=device)
    expected = a.world * (a.world + 1) / 2  # each rank contributes rank+1

    def once() -> None:
        t.fill_(a.rank + 1)
        dist.all_reduce(t)

    once()  # warm-up: builds the communicator
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(a.iters):
        once()
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = (time.perf_counter() - start) / a.iters
    ok = bool(torch.all(t == expected).item())
    dist.barrier()
    dist.destroy_process_group()
    if a.rank == 0:
        size = numel * 4
        busbw = size * 2 * (a.world - 1) / a.world / seconds / 1e9 if seconds > 0 else None
        print(json.dumps({"ok": ok, "expected": expected, "got": float(t[0].item()), "bytes": size,
                          "ms": round(seconds * 1e3, 3), "busbw_gbps": round(busbw, 2) if busbw else None,
                          "backend": a.backend, "world": a.world}), flush=True)


if __name__ == "__main__":
    main()
