"""Bytes of the weights on a device, tensor by tensor, for a dtype or a quantized storage mode.

What a quantized weight holds is its backend's answer (gemma_run.quant: each :class:`QuantBackend` says which
modules it quantizes, the bytes of one quantized weight, and the transient bytes a forward needs); this module
adds the rest: tensors kept in the model's dtype (embeddings, norms, biases, skipped modules), buffers, and the
CUDA caching allocator's rounding.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from gemma_run.planning.params import Tensor, Unit

DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2, "int64": 8, "int32": 4, "int8": 1, "uint8": 1, "bool": 1}
ALLOC_ROUND = 512  # the CUDA caching allocator rounds every tensor up to 512 bytes


@dataclass(frozen=True)
class Quant:
    """How the weights are stored: a storage mode of a quant backend (its ``planner_quant``)."""

    mode: str = "none"  # none | int8 | nf4 | fp4 (bitsandbytes) | int4 (torchao) | a new backend's planner_modes
    double_quant: bool = True
    skip_modules: tuple[str, ...] = ()  # as quant.skip_modules: replaces the backend's default skip list
    group_size: int = 128  # int4 only
    padded: bool = True  # int4 only: the CUDA layout (in_features padded to 1024); False: the CPU layout
    stacked: bool = False  # int4 CUDA layout only: sibling projections as the fast engine stacks them
    lm_head: bool = False  # int4 only: the output layer quantized too (quant.lm_head=int4), held unpadded on CUDA
    # The QuantBackend class (its _target_) that stores `mode`; empty: the built-in backend whose planner_modes
    # has it (gemma_run.quant.planner_backend)
    backend: str = field(default="", compare=False)

    @property
    def stored_by(self) -> Any:  # -> type[gemma_run.quant.QuantBackend]
        from gemma_run.quant import planner_backend

        return planner_backend(self.mode, self.backend)

    @property
    def bits(self) -> int:
        return self.stored_by.planner_modes[self.mode]


def quantized_modules(model: Any, quant: Quant) -> set[str]:
    """Names of the modules ``quant``'s backend stores quantized (empty for none); ``model`` on the meta device."""
    return quant.stored_by.planned_modules(model, quant)


def tensor_bytes(t: Tensor, quant: Quant, quantized: set[str], dtype: str) -> int:
    """Bytes of one tensor on a GPU (allocator rounding included)."""
    if not t.is_buffer and t.name.endswith(".weight") and t.module in quantized:
        return quant.stored_by.planned_weight_bytes(t.shape, quant, dtype, t.module)
    width = DTYPE_BYTES[t.dtype] if t.is_buffer else DTYPE_BYTES[dtype]
    if t.is_buffer and t.dtype in ("bfloat16", "float16", "float32") and t.dtype != "float32":
        width = DTYPE_BYTES[dtype]
    return rounded(t.numel * width)


def unit_bytes(unit: Unit, quant: Quant, quantized: set[str], dtype: str) -> int:
    return sum(tensor_bytes(t, quant, quantized, dtype) for t in unit.tensors)


def rounded(n: int) -> int:
    """``n`` bytes as the CUDA caching allocator holds them."""
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
