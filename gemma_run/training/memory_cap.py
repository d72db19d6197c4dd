"""``train.gpu_memory_cap``: train inside a smaller card's memory on a larger one (24GiB on a larger card).

``torch.cuda.set_per_process_memory_fraction`` makes the caching allocator raise out-of-memory past the cap,
as a card of that size would (the CUDA context is outside it on both). The trainer sets it before the
model loads, so loading is inside the cap too (random weights built in memory as well: they are made and
quantized unit by unit, as a checkpoint loads). The preflight plans with the cap as the GPU's size
(planning/inputs.py).
"""

from __future__ import annotations

import logging
from typing import Any

from gemma_run.planning.devices import parse_size

log = logging.getLogger(__name__)


def cap_bytes(cap: str | None) -> int | None:
    return parse_size(cap, "train.gpu_memory_cap") if cap else None


def apply(cap: str | None, when: str = "before loading") -> dict[str, Any] | None:
    """Cap this process's current GPU; returns what was set (None: no cap, or no GPU to cap)."""
    import torch

    limit = cap_bytes(cap)
    if limit is None:
        return None
    if not torch.cuda.is_available():
        log.info("train.gpu_memory_cap=%s: no GPU here, nothing to cap", cap)
        return None
    device = torch.cuda.current_device()
    total = torch.cuda.get_device_properties(device).total_memory
    fraction = min(1.0, limit / total)
    torch.cuda.set_per_process_memory_fraction(fraction, device)
    log.info("train.gpu_memory_cap=%s: cuda:%d limited to %.2f GiB of %.2f GiB (fraction %.4f), %s", cap, device,
             limit / 2**30, total / 2**30, fraction, when)
    return {"gpu_memory_cap_bytes": min(limit, total), "gpu_memory_fraction": round(fraction, 6),
            "gpu_memory_cap_applied": when}
