"""Bytes of the weights for a dtype or a bitsandbytes mode, tensor by tensor, as bitsandbytes stores them.

What bitsandbytes 0.45-0.50 keeps for one quantized Linear weight of n = out x in elements (checked on a
quantized model: ``Int8Params.SCB``, ``Params4bit.quant_state``):
- 8-bit (LLM.int8): the int8 weight (n bytes) + ``SCB``, one fp32 scale per output row (4 x out bytes).
- 4-bit (nf4/fp4): the packed weight (n/2 bytes, whatever ``quant_storage`` dtype holds it) + one absmax per
  block of 64 weights: fp32 (4 bytes) without double quant; with double quant a uint8 per block + one fp32
  per 256 blocks + a 256-entry fp32 code and an fp32 offset. Plus the 16-entry fp32 nf4/fp4 code.
- int4 (torchao, tinygemm): 4 bits per weight + one (scale, zero) pair per group of ``group_size`` weights of
  one row, in the model's dtype. On CUDA (tile_packed_to_4d) the weight is first padded: in_features to a
  multiple of 1024, out_features to 8 (``Int4TilePackedTo4dTensor.from_hp``); the CPU layout (opaque) is not.
  The fast engine stacks q/k/v and gate/up (``gemma_run.infer.engine.fused_projections``) and keeps their in_features
  padded only to what tinygemm needs (128, or the group size if larger): ``Quant.stacked``.
  Quantized: every ``nn.Linear`` but quant.skip_modules (default lm_head, vision tower, projector).
Which modules bitsandbytes quantizes is transformers' decision, reproduced by calling its own functions: every
``nn.Linear`` (and GPT-2's ``Conv1D``) except ``get_keys_to_not_convert`` (the lm_head, tied weights, the last
module) when no skip list is given, else exactly the skip list, plus ``_keep_in_fp32_modules``. Embeddings,
norms, convolutions and biases keep the model's dtype.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from gemma_run.planning.params import Tensor, Unit

DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2, "int64": 8, "int32": 4, "int8": 1, "uint8": 1, "bool": 1}
BLOCK = 64  # bitsandbytes' 4-bit block size on CUDA (and CPU)
NESTED_BLOCK = 256  # double quant: blocks of absmax values per fp32 scale
ALLOC_ROUND = 512  # the CUDA caching allocator rounds every tensor up to 512 bytes


@dataclass(frozen=True)
class Quant:
    """How the weights are stored: mode none | int8 | nf4 | fp4."""

    mode: str = "none"  # none | int8 | nf4 | fp4 (bitsandbytes) | int4 (torchao)
    double_quant: bool = True
    skip_modules: tuple[str, ...] = ()  # as quant.skip_modules: replaces transformers' default skip list
    group_size: int = 128  # int4 only
    padded: bool = True  # int4 only: the CUDA layout (in_features padded to 1024); False: the CPU layout
    stacked: bool = False  # int4 CUDA layout only: sibling projections as the fast engine stacks them
    lm_head: bool = False  # int4 only: the output layer quantized too (quant.lm_head=int4), held unpadded on CUDA

    @property
    def bits(self) -> int:
        return {"none": 16, "int8": 8, "nf4": 4, "fp4": 4, "int4": 4}[self.mode]


def quant_from(backend: str, bits: int, quant_type: str, double_quant: bool, skip: list[str] | tuple,
               group_size: int = 128, on_gpu: bool = True, lm_head: str = "keep") -> Quant:
    """The quant group's values -> a :class:`Quant` (``on_gpu``: which int4 layout the weights get)."""
    if backend == "none":
        return Quant()
    if backend == "torchao":
        return Quant("int4", skip_modules=tuple(skip), group_size=group_size, padded=on_gpu,
                     lm_head=lm_head == "int4")
    mode = "int8" if bits == 8 else quant_type
    return Quant(mode, double_quant, tuple(skip))


def quantized_modules(model: Any, quant: Quant) -> set[str]:
    """Names of the modules transformers replaces with bitsandbytes layers for ``quant`` (empty for none)."""
    if quant.mode == "none":
        return set()
    if quant.mode == "int4":
        from gemma_run.quant.torchao import DEFAULT_SKIP, quantized_linears

        return set(quantized_linears(model, list(quant.skip_modules) or list(DEFAULT_SKIP)))
    from torch import nn
    from transformers.pytorch_utils import Conv1D

    # transformers 4.x and 5.x keep these in different modules (gemma_run.loading.compat)
    from gemma_run.loading.compat import keys_to_not_convert as get_keys_to_not_convert
    from gemma_run.loading.compat import should_convert_module

    skip = list(quant.skip_modules) if quant.skip_modules else list(get_keys_to_not_convert(model))
    skip += list(getattr(model, "_keep_in_fp32_modules", None) or [])
    return {name for name, module in model.named_modules()
            if (type(module) is nn.Linear or isinstance(module, Conv1D)) and should_convert_module(name, skip)}


def quantized_weight_bytes(numel: int, rows: int, quant: Quant) -> int:
    """Bytes bitsandbytes holds for one quantized weight of ``numel`` elements with ``rows`` output rows."""
    if quant.mode == "int8":
        return _r(numel) + _r(rows * 4)  # CB (int8) + SCB (fp32 per row)
    packed = _r((numel + 1) // 2)
    blocks = -(-numel // BLOCK)
    code = _r(16 * 4)
    if not quant.double_quant:
        return packed + _r(blocks * 4) + code
    nested = -(-blocks // NESTED_BLOCK)
    return packed + _r(blocks) + _r(nested * 4) + _r(256 * 4) + _r(4) + code


def int4_weight_bytes(shape: tuple[int, ...], quant: Quant, dtype: str, module: str = "",
                      unpadded: bool = False) -> int:
    """Bytes torchao holds for one int4 weight of ``shape`` (out, in) of ``module``: packed data +
    scale_and_zero. ``unpadded``: held as ``fused_projections`` holds it (the output layer of quant.lm_head=int4)."""
    import math

    from gemma_run.infer.engine.fused_projections import GROUPS, TILE_N, TORCHAO_K_PAD

    rows, cols = shape
    if quant.padded:  # Int4TilePackedTo4dTensor pads before packing, and keeps the padding
        sibling = quant.stacked and module.rsplit(".", 1)[-1] in {n for g in GROUPS for n in g}
        stacked = rows % TILE_N == 0 and (sibling or unpadded)
        multiple = math.lcm(128, quant.group_size) if stacked else TORCHAO_K_PAD
        rows, cols = -(-rows // TILE_N) * TILE_N, -(-cols // multiple) * multiple
    groups = -(-cols // quant.group_size)
    return _r(rows * cols // 2) + _r(groups * rows * 2 * DTYPE_BYTES[dtype])


def tensor_bytes(t: Tensor, quant: Quant, quantized: set[str], dtype: str) -> int:
    """Bytes of one tensor on a GPU (allocator rounding included)."""
    if quant.mode == "int4" and not t.is_buffer and t.name.endswith(".weight") and t.module in quantized:
        return int4_weight_bytes(t.shape, quant, dtype, t.module)
    if not t.is_buffer and t.name.endswith(".weight") and t.module in quantized:
        rows = t.shape[0] if t.shape else 1
        return quantized_weight_bytes(t.numel, rows, quant)
    width = DTYPE_BYTES[t.dtype] if t.is_buffer else DTYPE_BYTES[dtype]
    if t.is_buffer and t.dtype in ("bfloat16", "float16", "float32") and t.dtype != "float32":
        width = DTYPE_BYTES[dtype]
    return _r(t.numel * width)


def unit_bytes(unit: Unit, quant: Quant, quantized: set[str], dtype: str) -> int:
    return sum(tensor_bytes(t, quant, quantized, dtype) for t in unit.tensors)


def _r(n: int) -> int:
    return -(-n // ALLOC_ROUND) * ALLOC_ROUND if n else 0


def dtype_table(unit_list: list[Unit], model: Any) -> dict[str, int]:
    """Total weight bytes of the model in each storage mode (a quick comparison table)."""
    out = {}
    for label, dtype, quant in (("float32", "float32", Quant()), ("bfloat16", "bfloat16", Quant()),
                                ("float16", "float16", Quant()), ("int8", "bfloat16", Quant("int8")),
                                ("nf4", "bfloat16", Quant("nf4", double_quant=False)),
                                ("nf4+double_quant", "bfloat16", Quant("nf4", double_quant=True)),
                                ("int4", "bfloat16", Quant("int4"))):
        q = quantized_modules(model, quant)
        out[label] = sum(unit_bytes(u, quant, q, dtype) for u in unit_list)
    return out
