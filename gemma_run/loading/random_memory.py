"""Random-weight models built in memory (``model.random_storage=memory``, or auto for big ones), layer by layer.

A random Gemma 3 27B in bf16 is 54 GB: more than the disk of a GPU machine can spare, and more than the GPU that
runs it quantized to 4 bits holds. Here nothing is built whole. transformers' ``from_pretrained(None,
state_dict=...)`` gets a state dict whose values are made when the loader reads them, one placement unit at a
time (a decoder layer, the embedding, a norm: ``gemma_run.planning.params.units``). A unit is made on the build
device (a copy of its meta module, filled by the model's own ``_init_weights``: std = initializer_range, Gemma's
norms at zero) and handed to the loader tensor by tensor, which quantizes each one (bitsandbytes 4/8-bit,
torchao int4) or places it, exactly as it does a checkpoint's tensors. So placement, quantization, tied weights
and the quantizer's attributes (``hf_quantizer``, ``is_loaded_in_4bit``, ...) come from the loader's own code,
and the load's peak is the loaded model plus one unit in the build dtype (what ``gemma_run.planning`` plans as
``random_build``), not the whole model in bf16.

Each unit is drawn from its own seed (``model.seed`` and the unit's name), so the weights do not depend on the
order the loader reads them in, nor on the quant: quant=none and quant=4bit of one seed hold the same values
before quantization. The build device and dtype follow the disk path's rule (small models: fp32 on the CPU; big
ones: bf16 on a GPU when there is one), so a GPU-built model is reproducible on the same kind of machine. The
weights differ from the disk path's checkpoint (which ``from_config`` draws in one stream).
"""

from __future__ import annotations

import copy
import hashlib
import logging
import threading
import time
from pathlib import Path
from typing import Any

from gemma_run.app.errors import GemmaRunError
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


def build(path: Path, model_cfg: Any, kwargs: dict[str, Any]) -> Any:
    """The model of the IN_MEMORY dir ``path``, loaded with from_pretrained's ``kwargs`` (dtype, device_map,
    quantization_config, ...), its weights made unit by unit while the loader reads them."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, GenerationConfig
    from transformers.integrations import is_deepspeed_zero3_enabled

    if is_deepspeed_zero3_enabled():  # from_pretrained would partition (empty) parameters on every rank
        raise GemmaRunError("model.random_storage=memory cannot build a model under DeepSpeed ZeRO-3 (each rank "
                            "would build the whole model, and ZeRO-3's init leaves its parameters empty)",
                            key="model.random_storage",
                            fix="model.random_storage=disk (the checkpoint is built once into cache_dir), or a "
                                "deepspeed stage below 3")
    start = time.perf_counter()
    config = AutoConfig.from_pretrained(path, trust_remote_code=model_cfg.trust_remote_code)
    kwargs = {k: v for k, v in kwargs.items() if k not in ("use_safetensors", "key_mapping", "config")}
    rule_device, dtype = random_weights.build_device_dtype(config)
    with torch.device("meta"):
        skeleton = AutoModelForCausalLM.from_config(config, **{compat.dtype_kwarg(): dtype})
    source = RandomSource(skeleton, model_cfg.seed, "cpu", dtype)
    device = _build_device(rule_device, kwargs, source.largest_unit_bytes())
    source.device = device
    state = source.state_dict()
    if not compat.loads_state_dict_lazily():
        state = source.materialize(park="cpu" if "quantization_config" in kwargs else None)
    try:
        loaded = type(skeleton).from_pretrained(None, config=config, state_dict=state, **kwargs)
    finally:
        left = source.close()
        del state
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    if left:
        log.warning("the loader did not read %d random tensor(s) (%s, ...)", len(left), left[0])
    log.info("built random %s in memory on %s (%s, unit by unit: %d units, the largest %.1f MiB) in %.1f s",
             model_cfg.name, device, str(dtype).removeprefix("torch."), source.units_made,
             source.largest_unit_bytes() / 2**20, time.perf_counter() - start)
    loaded.generation_config = GenerationConfig.from_pretrained(path)
    loaded.config.name_or_path = str(path)  # as a checkpoint load sets it (peft reads it when saving adapters)
    return loaded


def _build_device(rule_device: str, kwargs: dict[str, Any], unit_bytes: int) -> str:
    """Where units are made: the disk path's rule (small: the CPU; big: a GPU), on the GPU the model goes to
    (the current one when it spreads), and the CPU when no device map says where the weights go (DeepSpeed
    places them) or that GPU has no room for two units."""
    import torch

    if rule_device != "cuda" or "device_map" not in kwargs:
        return "cpu"
    gpu = target_gpu(kwargs.get("device_map"), kwargs.get("max_memory"))
    index = torch.cuda.current_device() if gpu is None else gpu
    free, _ = torch.cuda.mem_get_info(index)
    return f"cuda:{index}" if free > 2 * unit_bytes else "cpu"


def unit_seed(seed: int, unit: str) -> int:
    """The seed of one unit: model.seed and the unit's module name, stable across processes and machines."""
    digest = hashlib.sha256(f"{seed}/{unit}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


class _Lazy:
    """A state-dict value made when the loader reads it (``value[...]``, as it reads a safetensors slice)."""

    __slots__ = ("key", "source")

    def __init__(self, source: RandomSource, key: str) -> None:
        self.source, self.key = source, key

    def __getitem__(self, index: Any) -> Any:
        tensor = self.source.take(self.key)
        return tensor if index is Ellipsis else tensor[index]


class RandomSource:
    """The random tensors of a meta ``skeleton``'s checkpoint keys, made one unit at a time on ``device``.

    ``take(key)`` makes the key's unit when none of its tensors is waiting yet, and hands the tensor over; the
    unit's other tensors wait (the loader reads a unit's keys one after another) and nothing else is kept.
    """

    def __init__(self, skeleton: Any, seed: int, device: str, dtype: Any) -> None:
        from gemma_run.planning.params import units

        self.model, self.seed, self.device, self.dtype = skeleton, seed, device, dtype
        self.keys = checkpoint_keys(skeleton)
        self.key_set = set(self.keys)
        self.units = {u.name: u for u in units(skeleton)}
        self.unit_of = {t.name: u.name for u in self.units.values() for t in u.tensors}
        missing = [k for k in self.keys if k not in self.unit_of]
        if missing:
            raise RuntimeError(f"checkpoint keys outside every placement unit: {missing[:3]}")
        self.waiting: dict[str, Any] = {}
        self.taken: set[str] = set()
        self.units_made = 0
        self.lock = threading.Lock()  # the loader reads values from worker threads when it does not quantize

    def state_dict(self) -> dict[str, _Lazy]:
        return {key: _Lazy(self, key) for key in self.keys}

    def largest_unit_bytes(self) -> int:
        """Bytes of the largest unit's checkpoint tensors in the build dtype (the most that waits at once)."""
        import torch

        return max((sum(t.numel * getattr(torch, t.dtype).itemsize for t in u.tensors if t.name in self.key_set)
                    for u in self.units.values()), default=0)

    def take(self, key: str) -> Any:
        with self.lock:
            if key not in self.waiting:
                self._make(self.unit_of[key], key)
            self.taken.add(key)
            return self.waiting.pop(key)

    def materialize(self, park: str | None) -> dict[str, Any]:
        """Every value made now (loaders that read a state dict whole), moved to ``park`` when given."""
        return {key: (t.to(park) if park else t) for key in self.keys for t in [self.take(key)]}

    def close(self) -> list[str]:
        """Drop what still waits; returns the keys the loader never read."""
        with self.lock:
            left = [k for k in self.keys if k not in self.taken]
            self.waiting.clear()
            return left

    def _make(self, name: str, wanted: str) -> None:
        import torch

        from gemma_run.planning.params import own_tensors_only

        module = self.model.get_submodule(name)
        own_only = own_tensors_only(self.model, module)
        made = copy.deepcopy(module).to_empty(device=self.device, recurse=not own_only)
        for t in [*made.parameters(), *made.buffers()]:
            if hasattr(t, "_is_hf_initialized"):
                del t._is_hf_initialized
        init = _owner(self.model, name)._init_weights
        device = torch.device(self.device)
        with torch.random.fork_rng(devices=[device.index] if device.type == "cuda" else []), torch.no_grad():
            torch.manual_seed(unit_seed(self.seed, name))
            if own_only:
                init(made)
            else:
                made.apply(init)  # children first, as transformers' initialize_weights
        tensors = dict(made.named_parameters(recurse=not own_only))
        tensors.update(made.named_buffers(recurse=not own_only))
        for local, tensor in tensors.items():
            full = f"{name}.{local}" if name else local
            if full in self.key_set and self.unit_of[full] == name and (full not in self.taken or full == wanted):
                self.waiting[full] = tensor.detach()
        self.units_made += 1


def checkpoint_keys(model: Any) -> list[str]:
    """The keys a saved checkpoint of ``model`` holds: its state dict, each tied tensor once (first name)."""
    seen: set[int] = set()
    keys = []
    for key, tensor in model.state_dict(keep_vars=True).items():
        if id(tensor) not in seen:
            seen.add(id(tensor))
            keys.append(key)
    return keys


def _owner(model: Any, name: str) -> Any:
    """The innermost PreTrainedModel holding module ``name``: its ``_init_weights`` (and config) init the unit,
    as transformers' initialize_weights dispatches sub-models (a multimodal model's vision tower)."""
    from transformers import PreTrainedModel

    owner, module = model, model
    for part in name.split(".") if name else []:
        module = getattr(module, part)
        if isinstance(module, PreTrainedModel):
            owner = module
    return owner

