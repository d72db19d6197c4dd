"""The one loading path: every task gets its model and tokenizer from :func:`load`."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gemma_run import quant
from gemma_run.app.errors import GemmaRunError
from gemma_run.distributed import parallel
from gemma_run.loading import architecture, checkpoint, checks, compat, placement, random_weights
from gemma_run.quant.bitsandbytes import torch_dtype

log = logging.getLogger(__name__)


@dataclass
class Loaded:
    model: Any
    tokenizer: Any
    path: Path
    dtype: str
    load_seconds: float
    bytes_per_device: dict[str, int] = field(default_factory=dict)
    kind: str = "causal_lm"  # "causal_lm" | "text_only" (language model of a multimodal checkpoint) | "image_text"
    processor: Any = None  # image+text runs: the checkpoint's processor (None when it ships none)

    @property
    def input_device(self):  # -> torch.device
        return placement.input_device(self.model)

    @property
    def context_length(self) -> int | None:
        """The most positions (prompt + new tokens) the model was built for; None when it does not say."""
        config = self.model.config
        config = getattr(config, "text_config", None) or config
        for name in ("max_position_embeddings", "n_positions", "max_sequence_length"):
            value = getattr(config, name, None)
            if isinstance(value, int) and value > 0:
                return value
        return None


def choose_dtype(model_cfg: Any, quant_cfg: Any, model_type: str | None = None) -> str:
    """auto: bf16 on GPUs that support it, fp32 on CPU. fp16 is refused for Gemma 3 (activations overflow).

    ``model_type`` is the checkpoint's own (config.json); by default the one in ``model_cfg.config``.
    """
    import torch

    name = model_cfg.dtype
    if name == "auto":
        if torch.cuda.is_available():
            name = "bfloat16" if torch.cuda.is_bf16_supported() else "float32"
        else:
            name = "float32"
    check_dtype(name, model_type or str(model_cfg.config.get("model_type", "")))
    return name


def check_dtype(name: str, model_type: str) -> None:
    """The one rule on dtypes, shared with the planner: fp16 is refused for Gemma 3."""
    if name == "float16" and model_type.startswith("gemma3"):
        raise GemmaRunError(
            "float16 is refused for Gemma 3: its activations exceed fp16's range (max 65504) and overflow to "
            "inf/NaN, giving garbage output", key="model.dtype",
            fix="model.dtype=bfloat16 (or float32 on GPUs without bf16)")


def load_tokenizer(path: Path, model_cfg: Any):  # -> PreTrainedTokenizerBase
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path, trust_remote_code=model_cfg.trust_remote_code)


def load_processor(path: Path, model_cfg: Any):  # -> ProcessorMixin | None
    """The image+text processor a multimodal checkpoint ships, or None when it has none."""
    if not any((path / name).is_file() for name in ("processor_config.json", "preprocessor_config.json")):
        return None
    from transformers import AutoProcessor

    return AutoProcessor.from_pretrained(path, trust_remote_code=model_cfg.trust_remote_code)


def load(cfg: Any, *, device_map: Any = "config") -> Loaded:
    """Model + tokenizer for the composed run config ``cfg`` (model, quant, device_map, cache_dir).

    Everything that can be checked before reading weights is: where the weights are (safetensors only unless
    allowed), the dtype, whether bitsandbytes can run, and that the device map names devices and modules
    that exist and covers the whole model. ``device_map=None`` passes no device map (DeepSpeed ZeRO-3
    places the weights itself).
    """
    start = time.perf_counter()
    path = checkpoint.resolve(cfg.model, cfg.cache_dir)
    plan = architecture.plan(path, cfg.model.text_only, cfg.model.trust_remote_code)
    dtype = choose_dtype(cfg.model, cfg.quant, plan.model_type)
    kwargs: dict[str, Any] = {
        compat.dtype_kwarg(): torch_dtype(dtype),  # torch_dtype= on transformers < 4.56
        "use_safetensors": not cfg.model.allow_pickle,
        "trust_remote_code": cfg.model.trust_remote_code,
        **plan.kwargs,
    }
    if cfg.model.attn_implementation:
        kwargs["attn_implementation"] = cfg.model.attn_implementation
    if device_map == "config" and parallel.is_tp(cfg):
        kwargs.update(_tp_kwargs(cfg, path))
    elif device_map == "config":
        kwargs.update(checks.device_map_kwargs(cfg, path, plan))
    elif device_map is not None:
        kwargs["device_map"] = device_map
    on_cpu = _all_on_cpu(kwargs.get("device_map"))
    backend = quant.from_cfg(cfg.quant)
    qconfig = backend.transformers_config(plan.model_type, on_cuda=not on_cpu, dtype=dtype)
    if qconfig is not None:
        kwargs["quantization_config"] = qconfig
    backend.check_model(lambda: architecture.skeleton(path, plan, cfg.model.trust_remote_code), on_cuda=not on_cpu)
    tokenizer = load_tokenizer(path, cfg.model)
    processor = load_processor(path, cfg.model) if plan.multimodal else None
    tp = "distributed_config" in kwargs or "tp_plan" in kwargs
    log.info("loading %s from %s (%s, %s, quant=%s, device_map=%s)", cfg.model.name, path, plan.kind, dtype,
             cfg.quant.name, "tp (this rank's slice of every layer)" if tp else kwargs.get("device_map"))
    if random_weights.in_memory(path):
        from gemma_run.loading import random_memory

        model = _from_pretrained(lambda: random_memory.build(path, cfg.model, kwargs))
    else:
        cls = architecture.model_class(plan)
        model = _from_pretrained(lambda: cls.from_pretrained(path, **kwargs), quiet=plan.kind == "text_only")
    model.eval()
    backend.after_load(model, on_cuda=not on_cpu)
    loaded = Loaded(model=model, tokenizer=tokenizer, path=path, dtype=dtype,
                    load_seconds=round(time.perf_counter() - start, 3),
                    bytes_per_device=placement.bytes_per_device(model), kind=plan.kind, processor=processor)
    if plan.kind == "text_only":
        log.info("text-only run of a multimodal checkpoint: loaded the language model alone "
                 "(model.text_only=false loads the vision tower too)")
    for dev, size in loaded.bytes_per_device.items():
        log.info("  %s: %.1f MiB of parameters", dev, size / 2**20)
    return loaded


def _tp_kwargs(cfg: Any, path: Path) -> dict[str, Any]:
    """device_map=tp: transformers' tensor-parallel load (no device map: each rank's slice goes to its own device),
    refused when this process was not started by torchrun or the checkpoint's heads do not split."""
    import json

    from gemma_run.app import env

    world = int(env.get("WORLD_SIZE", "1") or 1)
    if env.get("RANK") is None or world < 2:
        raise GemmaRunError("device_map=tp loads a slice of every layer per process, but this process was not "
                            "started as one of several ranks (no RANK / WORLD_SIZE >= 2 from torchrun)",
                            key="launcher", fix="launcher=torchrun launcher.nproc_per_node=<GPUs>")
    if random_weights.in_memory(path):
        raise GemmaRunError(f"{path} is a random model built in memory at each load, which transformers' "
                            "tensor-parallel loader cannot shard", key="model.random_storage",
                            fix="model.random_storage=disk (the checkpoint is built once into cache_dir)")
    parallel.check_checkpoint(json.loads((path / "config.json").read_text()), world, path)
    return parallel.from_pretrained_kwargs()


def _all_on_cpu(device_map: Any) -> bool:
    import torch

    if isinstance(device_map, dict):
        return all(str(dev) in ("cpu", "disk") for dev in device_map.values())
    return not torch.cuda.is_available()


def _from_pretrained(call: Any, quiet: bool = False) -> Any:
    """``call()`` (a from_pretrained), with the library's errors for placement problems turned into fixable ones.

    ``quiet`` hides transformers' report of unexpected keys (the vision tower a text-only load skips).
    """
    from transformers.utils import logging as hf_logging

    before = hf_logging.get_verbosity()
    if quiet:
        hf_logging.set_verbosity_error()
    try:
        return call()
    except ValueError as e:
        text = str(e)
        if "offload_folder" in text or "offload to disk" in text:
            raise GemmaRunError(f"the model does not fit the device budget and would spill to disk: {text[:200]}",
                                key="device_map.max_memory",
                                fix="device_map=offload (offloads to the run dir), device_map.offload_folder=DIR, "
                                    "or raise device_map.max_memory") from e
        if "dispatched on the CPU or the disk" in text or "llm_int8_enable_fp32_cpu_offload" in text:
            raise GemmaRunError("the quantized model does not fit the GPUs, and bitsandbytes keeps CPU-placed "
                                "modules unquantized only when asked", key="quant.cpu_offload",
                                fix="quant.cpu_offload=true (those modules stay fp32 on the CPU), raise "
                                    "device_map.max_memory, or use more GPUs") from e
        raise
    finally:
        hf_logging.set_verbosity(before)
