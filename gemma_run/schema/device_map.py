"""Schema of the ``device_map`` group: where the model's modules go."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any


class Strategy(Enum):
    auto = "auto"
    balanced = "balanced"
    balanced_low_0 = "balanced_low_0"
    sequential = "sequential"
    single = "single"  # everything on `device`
    cpu = "cpu"
    explicit = "explicit"  # the user's `map` of module name -> device
    tp = "tp"  # tensor-parallel over the processes of launcher=torchrun (gemma_run/distributed/parallel.py)


@dataclass
class DeviceMapConfig:
    name: str = "auto"
    strategy: Strategy = Strategy.auto
    device: str = "cuda:0"  # strategy=single
    map: dict[str, Any] = field(default_factory=dict)  # strategy=explicit: {"model.embed_tokens": 0, ...}
    # Per device budget, e.g. {"0": "20GiB", "1": "22GiB", "cpu": "64GiB"}. Empty: what is free.
    max_memory: dict[str, str] = field(default_factory=dict)
    offload_folder: str | None = None  # where modules mapped to "disk" go
    offload_buffers: bool = False
