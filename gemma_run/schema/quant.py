"""Schema of the ``quant`` group: a base every option extends, plus one schema per backend.

``_target_`` names the backend class (``gemma_run.quant.<module>.<Class>``, see :mod:`gemma_run.quant`); each
``conf/quant/*.yaml`` extends its backend's schema (``defaults: [base_quant_<backend>]``), so a key of another
backend (``quant.group_size`` on quant=4bit) fails when Hydra composes the run.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum


class QuantType(Enum):
    nf4 = "nf4"
    fp4 = "fp4"


class InferAs(Enum):
    """quant=4bit in an inference run (gemma_run/quant/infer_format.py)."""

    auto = "auto"  # int4 (torchao) on one CUDA GPU where the model can take it, else NF4
    keep = "keep"  # the option's own format (NF4 for quant=4bit)
    int4 = "int4"  # int4, or refused where int4 cannot run


@dataclass
class QuantConfig:
    """Keys every backend has (quant=none uses this schema as it is)."""

    _target_: str = "gemma_run.quant.none.NoQuant"  # the backend class: what the other keys mean
    name: str = "none"
    backend: str = "none"  # must be the _target_ class's name: none | bitsandbytes | torchao | a new backend's
    bits: int = 16  # 16 (no quantization), 8 or 4
    # Modules kept unquantized. Empty: the backend's default (the output layer, lm_head). A list REPLACES that
    # default, so name lm_head in it too to keep it unquantized: [lm_head, vision_tower]
    skip_modules: list[str] = field(default_factory=list)
    # Allow modules that the device map puts on CPU to stay unquantized in fp32 (bitsandbytes 8-bit and 4-bit).
    cpu_offload: bool = False
    # The output layer: keep (the model's dtype, as transformers loads it) or int4 (torchao only: quantized after
    # loading, as the other Linears; a tied embedding keeps its table for the input lookup). On gemma3_27b a
    # decode step then reads 0.75 GB for it instead of 2.8 GB (docs/benchmarks.md).
    lm_head: str = "keep"


@dataclass
class BitsAndBytesQuantConfig(QuantConfig):
    """quant=8bit|4bit|fp4: bitsandbytes (LLM.int8() or NF4/FP4)."""

    _target_: str = "gemma_run.quant.bitsandbytes.BitsAndBytes"
    backend: str = "bitsandbytes"
    bits: int = 4
    quant_type: QuantType = QuantType.nf4  # 4-bit only
    double_quant: bool = True  # 4-bit only: quantize the block scales too (~0.4 bit/param saved)
    compute_dtype: str = "bfloat16"  # 4-bit only: dtype of the matmuls
    # 4-bit only: dtype the packed weights are stored in. Must equal the training dtype for QLoRA + ZeRO-3.
    quant_storage: str = "uint8"
    int8_threshold: float = 6.0  # 8-bit only: outlier threshold (LLM.int8())
    # NF4 only (quant=4bit sets auto): what an inference run (task=infer, bench; task=plan with plan.mode=infer)
    # loads. auto: torchao's int4 (groups of 128, tinygemm's faster kernels) on one CUDA GPU where the model
    # can take it, NF4 elsewhere, with the reason logged and in result.json (quant_loaded); keep: NF4; int4:
    # int4 or a refusal naming why. Training always loads NF4 (QLoRA).
    infer_as: InferAs = InferAs.keep


@dataclass
class TorchAoQuantConfig(QuantConfig):
    """quant=int4: torchao int4 weight-only (tinygemm kernels)."""

    _target_: str = "gemma_run.quant.torchao.TorchAoInt4"
    backend: str = "torchao"
    bits: int = 4
    # Weights per bf16 scale+zero pair; every quantized Linear's in_features must be a multiple of it.
    # 32, 64 or 128 (CPU kernels), also 256 on CUDA.
    group_size: int = 128
    # auto: tile_packed_to_4d on CUDA (tinygemm, bf16), opaque on CPU (torchao's prototype CPU tinygemm layout).
    packing_format: str = "auto"
    # How scales/zeros are chosen: tinygemm (min/max per group) or hqq (optimised: slower to quantize, usually
    # closer to the bf16 weights).
    qparams_algorithm: str = "tinygemm"


# ConfigStore names in the quant group: base_quant (quant=none, and a new backend's YAML) and one per backend
QUANT_SCHEMAS: dict[str, type] = {
    "base_quant_bitsandbytes": BitsAndBytesQuantConfig,
    "base_quant_torchao": TorchAoQuantConfig,
}


def schema_for(target: str | None) -> type:
    """The schema of a quant group whose ``_target_`` is ``target`` (QuantConfig for quant=none or a new backend)."""
    for schema in QUANT_SCHEMAS.values():
        if schema._target_ == target:
            return schema
    return QuantConfig
