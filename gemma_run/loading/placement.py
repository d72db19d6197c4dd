"""The device_map group -> from_pretrained's device_map / max_memory, and where the parameters ended up."""

from __future__ import annotations

import logging
from collections import defaultdict
from typing import Any

from gemma_run.app.errors import GemmaRunError

log = logging.getLogger(__name__)


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


# the strategies accelerate places by itself, which the memory plan follows (gemma_run.planning.devices)
PLANNED = ("auto", "balanced", "balanced_low_0", "sequential")


def planned(cfg: Any) -> dict[str, Any] | None:
    """The memory plan's placement as from_pretrained's device map, for device_map=auto, balanced,
    balanced_low_0 or sequential on this machine's GPUs.

    accelerate alone fills each GPU with weights up to its own margin and leaves no room for what the plan reserves
    beside them (the KV cache, activations, training state); following the plan's map, a run that the preflight
    found fitting is placed as planned. None, and accelerate places the modules, when: no GPU; a task that plans
    nothing (``task.plan_as``); a ``device_map.max_memory`` cap or ``plan.gpus`` (another machine's GPUs); the plan
    puts every module on one GPU (where accelerate puts them too); or some module fits nowhere (the preflight
    refuses such a run; with ``plan.preflight=false`` accelerate tries).
    """
    from omegaconf import OmegaConf

    dm = cfg.device_map
    mode = OmegaConf.select(cfg, "task.plan_as", default=None)
    if (dm.strategy.name not in PLANNED or mode is None or dm.max_memory
            or OmegaConf.select(cfg, "plan.gpus", default=None)):
        return None
    import torch

    if not torch.cuda.is_available():
        return None
    from gemma_run.planning import inputs
    from gemma_run.planning.plan import make_plan

    plan = make_plan(inputs.from_cfg(cfg, mode)[0])
    where = plan.get("device_map") or {}
    devices = set(where.values())
    if not where or "none" in devices or (len(devices) == 1 and next(iter(devices)).isdigit()):
        return None
    log.info("device_map=%s: modules placed as the memory plan says (%s)", dm.strategy.name,
             "; ".join(f"{dev}: {held}" for dev, held in plan["placement"].items()))
    return {name: _device(dev) for name, dev in where.items()}


def _gpu_index(dev: Any) -> int | None:
    """0 / "cuda:0" / "cuda" -> 0; None for cpu, disk, meta or anything else."""
    if isinstance(dev, int):
        return dev
    text = str(dev)
    if text == "cuda":
        return 0
    if text.startswith("cuda:") and text[5:].isdigit():
        return int(text[5:])
    return None


def check_devices(device_map: Any, max_memory: dict[Any, str] | None = None, n_gpus: int | None = None) -> None:
    """Every device named by the map or by max_memory must exist here: GPU indices below the GPU count,
    "cpu", or "disk" (map only). accelerate would silently drop a missing GPU from max_memory."""
    if n_gpus is None:
        import torch

        n_gpus = torch.cuda.device_count()
    have = f"GPUs 0..{n_gpus - 1}" if n_gpus else "no GPU"
    named = [(f"device_map.map.{name}" if name else "device_map", dev)
             for name, dev in (device_map.items() if isinstance(device_map, dict) else [])]
    named += [(f"device_map.max_memory.{dev}", dev) for dev in (max_memory or {})]
    for key, dev in named:
        gpu = _gpu_index(dev)
        if gpu is not None:
            if gpu >= n_gpus:
                raise GemmaRunError(f"{key} names GPU {dev}, but this machine has {have}", key=key,
                                    fix="use an existing GPU index, 'cpu' or 'disk' (`nvidia-smi -L` lists the GPUs)")
        elif dev not in ("cpu", "disk") or (dev == "disk" and key.startswith("device_map.max_memory")):
            raise GemmaRunError(f"{key}: unknown device {dev!r}", key=key,
                                fix="a GPU index (0, 1, ...), 'cuda:N', 'cpu' or 'disk' (disk: map only)")


def check_coverage(device_map: dict[str, Any], skeleton: Any) -> None:
    """An explicit map must name modules that exist and cover every parameter and buffer of the model.

    transformers otherwise fails late and obscurely (e.g. ``AttributeError: ... no attribute 'hf_device_map'``).
    """
    import difflib

    modules = {name for name, _ in skeleton.named_modules()}
    for name in device_map:
        if name and name not in modules:
            near = difflib.get_close_matches(name, sorted(modules), n=3)
            hint = f" (did you mean {', '.join(near)}?)" if near else ""
            raise GemmaRunError(f"device_map.map names {name!r}, which is not a module of this model{hint}",
                                key=f"device_map.map.{name}", fix=f"top-level modules: {_top_level(modules)}")
    tensors = [n for n, _ in skeleton.named_parameters(remove_duplicate=False)]
    tensors += [n for n, _ in skeleton.named_buffers(remove_duplicate=False)]
    unmapped: list[str] = []
    for tensor in tensors:
        if any(m == "" or tensor == m or tensor.startswith(m + ".") for m in device_map):
            continue
        owner = tensor.rsplit(".", 1)[0]
        # report the shortest unmapped prefix (e.g. `lm_head`, `model.norm`), once
        parts = owner.split(".")
        prefix = next((".".join(parts[:i]) for i in range(1, len(parts) + 1)
                       if not any(m.startswith(".".join(parts[:i])) for m in device_map)), owner)
        if prefix not in unmapped:
            unmapped.append(prefix)
    if unmapped:
        shown = ", ".join(unmapped[:8]) + (" ..." if len(unmapped) > 8 else "")
        example = ",".join(f"{m}:cpu" for m in unmapped[:4])
        raise GemmaRunError(f"device_map.map leaves modules unmapped: {shown}", key="device_map.map",
                            fix=f"map them too, e.g. '+device_map.map={{{example}}}' (or map '' for everything)")


def check_offload(device_map: Any, offload_folder: str | None, quantized: bool) -> None:
    """Modules mapped to "disk" need a folder, and bitsandbytes cannot offload quantized weights to disk."""
    if not isinstance(device_map, dict) or "disk" not in device_map.values():
        return
    if quantized:
        raise GemmaRunError("bitsandbytes cannot offload quantized weights to disk", key="device_map.map",
                            fix="map those modules to 'cpu' (with quant.cpu_offload=true), or use quant=none")
    if not offload_folder:
        raise GemmaRunError("device_map.map sends modules to 'disk' but no offload folder is set",
                            key="device_map.offload_folder", fix="device_map.offload_folder=/fast/disk/offload")


def _top_level(modules: set[str]) -> str:
    names = sorted({m for m in modules if m and m.count(".") <= 1 and not m.split(".")[-1].isdigit()})
    return ", ".join(names[:12])


def input_device(model: Any):  # -> torch.device
    """Where inputs must go: the device the input embedding runs on (never a guessed cuda:0)."""
    import torch

    emb = model.get_input_embeddings()
    hook = getattr(emb, "_hf_hook", None)
    if hook is not None and getattr(hook, "execution_device", None) is not None:
        return torch.device(hook.execution_device)
    return emb.weight.device


def storage_bytes(tensor: Any) -> int:
    """Bytes a tensor holds; a wrapper subclass (torchao's int4 weights) holds its inner tensors, while its own
    numel/element_size describe the unquantized weight it stands for. A DTensor (device_map=tp) counts this
    rank's slice."""
    if callable(getattr(tensor, "to_local", None)):
        return storage_bytes(tensor.to_local())
    if hasattr(type(tensor), "__tensor_flatten__"):
        names, _ = tensor.__tensor_flatten__()
        return sum(storage_bytes(getattr(tensor, n)) for n in names if getattr(tensor, n) is not None)
    return tensor.numel() * tensor.element_size()


def bytes_per_device(model: Any) -> dict[str, int]:
    """Bytes of parameters and buffers per device ("cpu", "cuda:0", "disk" for offloaded modules)."""
    hf_map = getattr(model, "hf_device_map", None) or {}
    totals: dict[str, int] = defaultdict(int)
    seen = set()
    for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
        if id(tensor) in seen:  # tied weights count once
            continue
        seen.add(id(tensor))
        size = storage_bytes(tensor)
        dev = str(tensor.device)
        if dev == "meta":
            owner = max((m for m in hf_map if name.startswith(m + ".") or m == ""), key=len, default=None)
            dev = str(hf_map.get(owner, "disk")) if owner is not None else "disk"
        if dev.isdigit():
            dev = f"cuda:{dev}"
        totals[dev] += size
    return dict(sorted(totals.items()))
