"""The one loading path: every task gets its model and tokenizer from :func:`load`."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gemma_run.errors import GemmaRunError
from gemma_run.loading import checkpoint, placement, quantization

log = logging.getLogger(__name__)


@dataclass
class Loaded:
    model: Any
    tokenizer: Any
    path: Path
    dtype: str
    load_seconds: float
    bytes_per_device: dict[str, int] = field(default_factory=dict)

    @property
    def input_device(self):  # -> torch.device
        return placement.input_device(self.model)


def choose_dtype(model_cfg: Any, quant_cfg: Any) -> str:
    """auto: bf16 on GPUs that support it, fp32 on CPU. fp16 is refused for Gemma 3 (activations overflow)."""
    import torch

    name = model_cfg.dtype
    if name == "auto":
        if torch.cuda.is_available():
            name = "bfloat16" if torch.cuda.is_bf16_supported() else "float32"
        else:
            name = "float32"
    model_type = str(model_cfg.config.get("model_type", ""))
    if name == "float16" and model_type.startswith("gemma3"):
        raise GemmaRunError(
            "float16 is refused for Gemma 3: its activations exceed fp16's range (max 65504) and overflow to "
            "inf/NaN, giving garbage output", key="model.dtype",
            fix="model.dtype=bfloat16 (or float32 on GPUs without bf16)")
    return name


def load_tokenizer(path: Path, model_cfg: Any):  # -> PreTrainedTokenizerBase
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path, trust_remote_code=model_cfg.trust_remote_code)


def load(cfg: Any, *, device_map: Any = "config") -> Loaded:
    """Model + tokenizer for the composed run config ``cfg`` (model, quant, device_map, cache_dir).

    ``device_map=None`` passes no device map (DeepSpeed ZeRO-3 places the weights itself).
    """
    from transformers import AutoModelForCausalLM

    start = time.perf_counter()
    path = checkpoint.resolve(cfg.model, cfg.cache_dir)
    dtype = choose_dtype(cfg.model, cfg.quant)
    kwargs: dict[str, Any] = {
        "dtype": quantization.torch_dtype(dtype),
        "use_safetensors": not cfg.model.allow_pickle,
        "trust_remote_code": cfg.model.trust_remote_code,
    }
    if cfg.model.attn_implementation:
        kwargs["attn_implementation"] = cfg.model.attn_implementation
    qconfig = quantization.build(cfg.quant)
    if qconfig is not None:
        kwargs["quantization_config"] = qconfig
    if device_map == "config":
        kwargs.update(placement.build(cfg.device_map))
        placement.check_devices(kwargs["device_map"])
    elif device_map is not None:
        kwargs["device_map"] = device_map
    tokenizer = load_tokenizer(path, cfg.model)
    log.info("loading %s from %s (%s, quant=%s, device_map=%s)", cfg.model.name, path, dtype, cfg.quant.name,
             kwargs.get("device_map"))
    model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    model.eval()
    loaded = Loaded(model=model, tokenizer=tokenizer, path=path, dtype=dtype,
                    load_seconds=round(time.perf_counter() - start, 3),
                    bytes_per_device=placement.bytes_per_device(model))
    for dev, size in loaded.bytes_per_device.items():
        log.info("  %s: %.1f MiB of parameters", dev, size / 2**20)
    return loaded
