"""The GPUs to plan for, and where each unit goes under a device_map strategy.

accelerate's ``infer_auto_device_map`` drops GPUs this machine does not have, so the placement for a machine
described in config (``plan.gpus=[24GiB,24GiB,24GiB]``) is done here, following accelerate's rules:
- sequential: fill GPU 0 up to its budget, then GPU 1, ...; then CPU, then disk.
- auto / balanced: each GPU but the last gets at most total/N + 1.25 x a decoder layer
  (``get_balanced_memory``), the last GPU up to its budget; then CPU, then disk.
- GPU 0 keeps room for the largest unit still to place (``infer_auto_device_map`` reserves it on the main
  device, and takes the next largest once that one is placed: with Gemma's 262k vocabulary the embedding, 2.6 GiB
  in bf16 for 27B, until the embedding itself is placed).
- balanced_low_0: as balanced over GPUs 1..N-1, GPU 0 kept free for generation's work.
- single: everything on one device; cpu: everything on the CPU; explicit: the user's map.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from gemma_run.app.errors import GemmaRunError

_UNITS = {"": 1, "b": 1, "k": 1000, "kb": 1000, "m": 1000**2, "mb": 1000**2, "g": 1000**3, "gb": 1000**3,
          "t": 1000**4, "tb": 1000**4, "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}
_SIZE = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*$")


def parse_size(text: str | int | float, key: str = "plan.gpus") -> int:
    """'24GiB' -> bytes; '24GB' is decimal (24e9), as accelerate reads max_memory. A bare number is bytes."""
    if isinstance(text, int | float):
        return int(text)
    m = _SIZE.match(str(text))
    unit = m.group(2).lower() if m else None
    if not m or unit not in _UNITS:
        raise GemmaRunError(f"cannot read {text!r} as a memory size", key=key,
                            fix="sizes like 24GiB, 80GB or 16000MiB, e.g. plan.gpus=[24GiB,24GiB,24GiB]")
    return int(float(m.group(1)) * _UNITS[unit])


def parse_gpus(items: list[str], key: str = "plan.gpus") -> list[int]:
    """A GPU list from config; ``3x24GiB`` counts as three GPUs."""
    out: list[int] = []
    for item in items:
        count, sep, size = str(item).partition("x")
        if sep and count.strip().isdigit():
            out += [parse_size(size, key)] * int(count)
        else:
            out.append(parse_size(item, key))
    if any(b <= 0 for b in out):
        raise GemmaRunError(f"{key} has a GPU of zero bytes: {list(items)}", key=key, fix="plan.gpus=[24GiB]")
    return out


def detect_gpus() -> list[int]:
    """Free bytes of each visible GPU (empty without CUDA). Creates a CUDA context on each GPU."""
    import torch

    if not torch.cuda.is_available():
        return []
    return [torch.cuda.mem_get_info(i)[0] for i in range(torch.cuda.device_count())]


def cpu_memory() -> int:
    """Physical memory of this machine."""
    import os

    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


@dataclass
class Item:
    """A unit to place: its name and the bytes it brings (weights + its per-layer state)."""

    name: str
    size: int
    layer: bool = False  # a decoder layer (sets the balanced buffer)


def place(items: list[Item], budgets: list[int], strategy: str, cpu_budget: int, disk: bool,
          single: str = "0", explicit: dict[str, str] | None = None) -> dict[str, str]:
    """Unit name -> device ("0", "1", ..., "cpu", "disk", or "none" when nothing can take it)."""
    n = len(budgets)
    if strategy == "cpu" or (n == 0 and strategy != "explicit"):
        return {it.name: "cpu" for it in items}
    if strategy == "single":
        return {it.name: single for it in items}
    if strategy == "explicit":
        return {it.name: _explicit(it.name, explicit or {}) for it in items}
    limits = list(budgets)
    total = sum(it.size for it in items)
    biggest = max((it.size for it in items), default=0)
    layer = max((it.size for it in items if it.layer), default=biggest)
    if strategy in ("auto", "balanced", "balanced_low_0") and n > 1:
        low0 = strategy == "balanced_low_0"
        share = total // (n - 1 if low0 else n) + int(1.25 * layer)
        for i in range(n - 1):
            limits[i] = min(budgets[i], share)
        if low0:
            limits[0] = max(0, min(budgets[0], total - sum(limits[1:])))
    # the largest unit after each one: GPU 0's reserve while that one is placed
    after = [0] * len(items)
    for i in range(len(items) - 2, -1, -1):
        after[i] = max(after[i + 1], items[i + 1].size)
    used = [0] * n
    cpu_used = 0
    out: dict[str, str] = {}
    gpu = 0
    for i, it in enumerate(items):
        while gpu < n and used[gpu] + it.size > limits[gpu] - (after[i] if gpu == 0 else 0):
            gpu += 1
        if gpu < n:
            used[gpu] += it.size
            out[it.name] = str(gpu)
        elif cpu_used + it.size <= cpu_budget:
            cpu_used += it.size
            out[it.name] = "cpu"
        else:
            out[it.name] = "disk" if disk else "none"
    return out


def _explicit(name: str, mapping: dict[str, str]) -> str:
    best = max((k for k in mapping if k == "" or name == k or name.startswith(k + ".")), key=len, default=None)
    if best is None:
        raise GemmaRunError(f"device_map.map does not place {name!r}", key="device_map.map",
                            fix="cover every module (a prefix such as model.layers covers its layers)")
    dev = str(mapping[best])
    return dev.removeprefix("cuda:")
