"""The quant group -> a transformers quantization config (one builder for every task)."""

from __future__ import annotations

from typing import Any

from gemma_run.errors import GemmaRunError


def torch_dtype(name: str):  # -> torch.dtype
    import torch

    try:
        return {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32,
                "uint8": torch.uint8}[name]
    except KeyError:
        raise GemmaRunError(f"unknown dtype {name!r}", key="quant", fix="bfloat16, float16, float32 or uint8") \
            from None


def check_bitsandbytes() -> None:
    """bitsandbytes must import and find a backend here, else say why and what to use."""
    try:
        import bitsandbytes  # noqa: F401
    except Exception as e:  # ImportError, or its own RuntimeError when no backend fits
        raise GemmaRunError(
            f"bitsandbytes cannot run here: {type(e).__name__}: {e}",
            key="quant",
            fix="pip install 'bitsandbytes>=0.45' (CPU and CUDA builds are on PyPI), or run with quant=none",
        ) from e


def build(quant_cfg: Any):  # -> transformers.BitsAndBytesConfig | None
    if quant_cfg.backend.name == "none":
        return None
    check_bitsandbytes()
    from transformers import BitsAndBytesConfig

    skip = list(quant_cfg.skip_modules) or None
    if quant_cfg.bits == 8:
        return BitsAndBytesConfig(load_in_8bit=True, llm_int8_threshold=quant_cfg.int8_threshold,
                                  llm_int8_skip_modules=skip,
                                  llm_int8_enable_fp32_cpu_offload=quant_cfg.cpu_offload)
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=quant_cfg.quant_type.value,
        bnb_4bit_use_double_quant=quant_cfg.double_quant,
        bnb_4bit_compute_dtype=torch_dtype(quant_cfg.compute_dtype),
        bnb_4bit_quant_storage=torch_dtype(quant_cfg.quant_storage),
        llm_int8_skip_modules=skip,
        llm_int8_enable_fp32_cpu_offload=quant_cfg.cpu_offload,
    )
