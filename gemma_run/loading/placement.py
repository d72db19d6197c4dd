"""The device_map group -> from_pretrained's device_map / max_memory, and where the parameters ended up."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from gemma_run.errors import GemmaRunError


def _device(value: Any) -> Any:
    """'0' -> 0 (a GPU index); 'cpu', 'disk', 'cuda:1', 'meta' stay strings."""
    if isinstance(value, int):
        return value
    text = str(value)
    return int(text) if text.isdigit() else text


def build(dm_cfg: Any) -> dict[str, Any]:
    """Keyword arguments for from_pretrained: device_map, max_memory, offload_folder."""
    strategy = dm_cfg.strategy.name
    kwargs: dict[str, Any] = {}
    if strategy == "cpu":
        kwargs["device_map"] = {"": "cpu"}
    elif strategy == "single":
        kwargs["device_map"] = {"": _device(dm_cfg.device.removeprefix("cuda:"))
                                if dm_cfg.device.startswith("cuda:") else dm_cfg.device}
    elif strategy == "explicit":
        kwargs["device_map"] = {name: _device(dev) for name, dev in dm_cfg.map.items()}
    else:
        kwargs["device_map"] = strategy
    if dm_cfg.max_memory:
        kwargs["max_memory"] = {_device(k): str(v) for k, v in dm_cfg.max_memory.items()}
    if dm_cfg.offload_folder:
        kwargs["offload_folder"] = str(dm_cfg.offload_folder)
        kwargs["offload_buffers"] = bool(dm_cfg.offload_buffers)
    return kwargs


def check_devices(device_map: Any) -> None:
    """An explicit/single map must name devices that exist here."""
    if not isinstance(device_map, dict):
        return
    import torch

    n = torch.cuda.device_count()
    for name, dev in device_map.items():
        if isinstance(dev, int) and dev >= n:
            have = f"GPUs 0..{n - 1}" if n else "no GPU"
            raise GemmaRunError(f"device_map puts {name or 'the model'!r} on GPU {dev}, but this machine has {have}",
                                key="device_map", fix="use an existing device, 'cpu' or 'disk'")


def input_device(model: Any):  # -> torch.device
    """Where inputs must go: the device the input embedding runs on (never a guessed cuda:0)."""
    import torch

    emb = model.get_input_embeddings()
    hook = getattr(emb, "_hf_hook", None)
    if hook is not None and getattr(hook, "execution_device", None) is not None:
        return torch.device(hook.execution_device)
    return emb.weight.device


def bytes_per_device(model: Any) -> dict[str, int]:
    """Bytes of parameters and buffers per device ("cpu", "cuda:0", "disk" for offloaded modules)."""
    hf_map = getattr(model, "hf_device_map", None) or {}
    totals: dict[str, int] = defaultdict(int)
    seen = set()
    for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
        if id(tensor) in seen:  # tied weights count once
            continue
        seen.add(id(tensor))
        size = tensor.numel() * tensor.element_size()
        dev = str(tensor.device)
        if dev == "meta":
            owner = max((m for m in hf_map if name.startswith(m + ".") or m == ""), key=len, default=None)
            dev = str(hf_map.get(owner, "disk")) if owner is not None else "disk"
        if dev.isdigit():
            dev = f"cuda:{dev}"
        totals[dev] += size
    return dict(sorted(totals.items()))
