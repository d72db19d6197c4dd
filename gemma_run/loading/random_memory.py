"""Random-weight models built in memory (``model.random_storage=memory``, or auto for big ones).

A random Gemma 3 27B in bf16 is 54 GB: more than the disk of a GPU machine can spare, and writing then reading
it takes longer than building it (10-15 s on an H100). Here the weights are built with ``from_config`` (seeded,
the same device and dtype rule as the disk path, so a tiny model gets exactly the disk path's weights) and then
handed to transformers' ``from_pretrained(None, state_dict=..., quantization_config=..., device_map=...)``:
quantization, placement, tied weights and the model's quantizer attributes (``hf_quantizer``,
``is_loaded_in_4bit``, ``quantization_method``) come from the same code as a checkpoint load.

Where the state dict is built: on the target GPU when the whole model goes to one GPU and fits there; it stays
there when nothing needs more room (bf16: the loaded parameters ARE those tensors, no copy), and is parked on
the CPU first when the quantized copy would not fit next to it. Multi-GPU or CPU targets are built on a GPU
when one has room (fast) and parked on the CPU, or built on the CPU.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from gemma_run.errors import GemmaRunError
from gemma_run.loading import compat, placement, random_weights

log = logging.getLogger(__name__)


def target_gpu(device_map: Any, max_memory: Any) -> int | None:
    """The one GPU the whole model goes to, or None (several devices, the CPU, or a memory cap to honour)."""
    import torch

    if max_memory or not torch.cuda.is_available():
        return None
    if isinstance(device_map, str):
        return 0 if torch.cuda.device_count() == 1 and device_map != "cpu" else None
    if isinstance(device_map, dict) and len({str(v) for v in device_map.values()}) == 1:
        return placement._gpu_index(next(iter(device_map.values())))
    return None


def build(path: Path, model_cfg: Any, kwargs: dict[str, Any], quant_bits: int) -> Any:
    """The model of the IN_MEMORY dir ``path``, loaded with from_pretrained's ``kwargs`` (dtype, device_map,
    quantization_config, ...). ``quant_bits``: 16 for none, 8 or 4 (how much room the quantized copy needs)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, GenerationConfig
    from transformers.integrations import is_deepspeed_zero3_enabled

    if is_deepspeed_zero3_enabled():  # from_config would build partitioned (empty) parameters on every rank
        raise GemmaRunError("model.random_storage=memory cannot build a model under DeepSpeed ZeRO-3 (each rank "
                            "would build the whole model, and ZeRO-3's init leaves its parameters empty)",
                            key="model.random_storage",
                            fix="model.random_storage=disk (the checkpoint is built once into cache_dir), or a "
                                "deepspeed stage below 3")
    start = time.perf_counter()
    config = AutoConfig.from_pretrained(path, trust_remote_code=model_cfg.trust_remote_code)
    kwargs = {k: v for k, v in kwargs.items() if k not in ("use_safetensors", "key_mapping", "config")}
    gpu = target_gpu(kwargs.get("device_map"), kwargs.get("max_memory"))
    # no device map (DeepSpeed ZeRO-3 places the weights): build on the CPU, never on a guessed GPU
    device, dtype = _build_device_dtype(config, gpu, "device_map" in kwargs)
    torch.manual_seed(model_cfg.seed)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, **{compat.dtype_kwarg(): dtype})
    cls = type(model)
    state = model.state_dict()
    del model
    size = sum(t.numel() * t.element_size() for t in {id(t): t for t in state.values()}.values())
    log.info("built random %s in memory on %s (%s, %.1f GiB) in %.1f s", model_cfg.name, device,
             str(dtype).removeprefix("torch."), size / 2**30, time.perf_counter() - start)
    if device.startswith("cuda"):
        if gpu is not None and gpu == torch.device(device).index and not _must_park(device, size, quant_bits):
            kwargs["device_map"] = {"": gpu}  # "auto" would count the state dict as used and spill to the CPU
        else:
            state = _park_on_cpu(state)
            torch.cuda.empty_cache()
    try:
        loaded = cls.from_pretrained(None, config=config, state_dict=state, **kwargs)
    finally:
        del state
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    loaded.generation_config = GenerationConfig.from_pretrained(path)
    loaded.config.name_or_path = str(path)  # as a checkpoint load sets it (peft reads it when saving adapters)
    return loaded


def _build_device_dtype(config: Any, gpu: int | None, mapped: bool) -> tuple[str, Any]:
    """The disk path's rule (small: fp32 on the CPU; big: bf16 on a GPU), with the GPU the target one, and the
    CPU when the bf16 model would not fit the GPU's free memory or no device map says where it goes."""
    import torch

    device, dtype = random_weights.build_device_dtype(config)
    if device != "cuda" or not mapped:
        return "cpu", dtype
    index = 0 if gpu is None else gpu
    free, _ = torch.cuda.mem_get_info(index)
    if random_weights.checkpoint_bytes(config) > 0.9 * free:
        return "cpu", dtype
    return f"cuda:{index}", dtype


def _must_park(device: str, size: int, quant_bits: int) -> bool:
    """Whether the quantized copy (bits/16 of the bf16 bytes, + 15% for unquantized parts and scratch) would
    not fit next to the bf16 state dict on ``device``."""
    if quant_bits >= 16:
        return False
    import torch

    free, _ = torch.cuda.mem_get_info(torch.device(device))
    return free < size * (quant_bits / 16 + 0.15)


def _park_on_cpu(state: dict[str, Any]) -> dict[str, Any]:
    """Move the state dict to the CPU tensor by tensor (freeing the GPU as it goes), keeping tied tensors tied."""
    moved: dict[int, Any] = {}
    for name in list(state):
        t = state[name]
        if id(t) not in moved:
            moved[id(t)] = t.to("cpu")
        state[name] = moved[id(t)]
    return state
