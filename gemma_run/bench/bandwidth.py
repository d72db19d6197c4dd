"""The memory bandwidth of the device the model runs on, measured by copying one large tensor into another.

A copy reads every byte once and writes it once, so bandwidth = 2 x bytes / seconds (read + write), the
convention of the copy bandwidths in docs/benchmarks.md; the decode limit is measured against it.
On a GPU the copies are timed with CUDA events; on the CPU (so CI can run task=bench) with perf_counter.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

COPIES = 10  # timed copies; the fastest is kept (the others lost time to something else)


def fastest(op: Callable[[], Any], device: Any, repeats: int) -> float:
    """Seconds of the fastest of ``repeats`` calls of ``op`` on ``device`` (a torch.device): CUDA events on a GPU,
    perf_counter on the CPU. The slower calls lost time to something else."""
    import torch

    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            op()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1000)
        else:
            t0 = time.perf_counter()
            op()
            times.append(time.perf_counter() - t0)
    return min(times)


def measure(device: Any, nbytes: int) -> dict[str, Any]:
    """{"device", "bytes", "seconds", "bytes_per_second"} of the fastest of COPIES device-to-device copies."""
    import torch

    device = torch.device(device)
    n = max(nbytes // 4, 1)
    src = torch.ones(n, dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    dst.copy_(src)  # first touch: page faults and lazy allocation are not bandwidth
    seconds = fastest(lambda s=src, d=dst: d.copy_(s), device, COPIES)
    moved = 2 * src.numel() * src.element_size()  # read + written
    del src, dst
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return {"device": str(device), "bytes": moved // 2, "seconds": seconds, "bytes_per_second": moved / seconds}
