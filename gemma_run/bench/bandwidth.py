"""The memory bandwidth of the device the model runs on, measured by copying one large tensor into another.

A copy reads every byte once and writes it once, so bandwidth = 2 x bytes / seconds (read + write), the
convention of the copy bandwidths in docs/benchmarks.md; the decode limit is measured against it.
On a GPU the copies are timed with CUDA events; on the CPU (so CI can run task=bench) with perf_counter.
"""

from __future__ import annotations

import time
from typing import Any

COPIES = 10  # timed copies; the fastest is kept (the others lost time to something else)


def measure(device: Any, nbytes: int) -> dict[str, Any]:
    """{"device", "bytes", "seconds", "bytes_per_second"} of the fastest of COPIES device-to-device copies."""
    import torch

    device = torch.device(device)
    n = max(nbytes // 4, 1)
    src = torch.ones(n, dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    dst.copy_(src)  # first touch: page faults and lazy allocation are not bandwidth
    times = []
    for _ in range(COPIES):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            dst.copy_(src)
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1000)
        else:
            t0 = time.perf_counter()
            dst.copy_(src)
            times.append(time.perf_counter() - t0)
    seconds = min(times)
    moved = 2 * src.numel() * src.element_size()  # read + written
    del src, dst
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return {"device": str(device), "bytes": moved // 2, "seconds": seconds, "bytes_per_second": moved / seconds}
