"""quant=4bit's NF4 linears multiplied by gemma-run's 4-bit kernel (:mod:`gemma_run.kernels.gemv4`) in the
fast engine's decode step, instead of bitsandbytes' matrix-vector product.

Why: a batch-1 decode step is bound by reading the weights, and bitsandbytes' NF4 product reads them at a fraction
of the bandwidth a dedicated kernel reaches (docs/benchmarks.md, "4-bit kernels").

How, without copying a weight: each bitsandbytes ``Linear4bit`` holding NF4 weights is replaced by a
:class:`Packed4Linear` that reads the same bytes. Its packed weight is the bitsandbytes weight's own storage with
each byte's two nibbles swapped in place (bitsandbytes keeps the first input in the high nibble, the kernel in the
low one), and its absmax, quantized or not, is the quant state's own tensors, so the values are exactly
bitsandbytes'. The original modules are kept aside: :func:`unpack` swaps the nibbles back and puts them back
(before the model trains or is saved). Fused projections (:mod:`gemma_run.infer.engine.fused_projections`) stack
Packed4Linear siblings into one buffer that becomes the storage of each original weight (a view of its rows), so
fusing copies nothing either. Prompts (more than ``gemv4.MAX_ROWS`` rows) are multiplied as bitsandbytes does
it: the weight dequantized to the activations' dtype (a chunk of rows at a time), then a matmul.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Any

import torch

from gemma_run.kernels import gemv4

log = logging.getLogger(__name__)

MARK = "_gemma_run_packed_4bit"  # set on a model once packed: the number of linears replaced
CHUNK = 1 << 26  # bytes of packed weight swapped at a time (bounds the swap's temporary memory)


def swap_nibbles_(data: torch.Tensor) -> None:
    """Swap the two nibbles of every byte of the uint8 tensor ``data``, in place, a chunk at a time."""
    flat = data.view(-1)
    for start in range(0, flat.numel(), CHUNK):
        part = flat[start:start + CHUNK]
        part.copy_(((part & 0xF) << 4) | (part >> 4))


def packable(module: Any) -> bool:
    """A bitsandbytes NF4 ``Linear4bit`` the kernel can take as it is (whole blocks per row, no device hook, in
    bitsandbytes' own layout). On a CPU with AVX512-BF16, bitsandbytes repacks a weight for its CPU kernel at the
    module's first forward without gradients (``quant_state.packing_format_for_cpu``: 32-row tiles, absmax in
    bf16); such a module stays bitsandbytes', multiplied by that kernel."""
    try:
        from bitsandbytes.nn import Linear4bit
    except ImportError:
        return False
    if type(module) is not Linear4bit or hasattr(module, "_hf_hook"):
        return False
    state = getattr(module.weight, "quant_state", None)
    return (state is not None and state.quant_type == "nf4" and module.weight.dtype == torch.uint8
            and int(state.shape[1]) % state.blocksize == 0 and not getattr(state, "packing_format_for_cpu", False))


class Packed4Linear(torch.nn.Module):
    """Stands where a bitsandbytes NF4 ``Linear4bit`` stood: the same weights, multiplied by the 4-bit kernel."""

    def __init__(self, original: Any, packed: gemv4.Packed4, config: gemv4.KernelConfig) -> None:
        super().__init__()
        self._original = [original]  # a list: not a submodule (its weight is this module's, nibbles swapped)
        self.packed = packed
        self.config = config
        self.bias = original.bias
        self.in_features, self.out_features = packed.in_features, packed.out_features
        self.register_buffer("table", torch.tensor(gemv4.NF4, device=packed.qweight.device), persistent=False)
        self.kernel = packed.qweight.is_cuda and gemv4.triton_available()

    @classmethod
    def of(cls, original: Any, config: gemv4.KernelConfig) -> Packed4Linear:
        """The module for a :func:`packable` ``original``, its weight's nibbles swapped in place."""
        packed = gemv4.from_bitsandbytes(original.weight, swapped=True)  # checks the format; views of its tensors
        swap_nibbles_(original.weight.data)
        return cls(original, packed, config)

    def restore(self) -> Any:
        """The original module, its weight's nibbles swapped back (this module must not be used after)."""
        original = self._original[0]
        swap_nibbles_(original.weight.data)
        return original

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.numel() // x.shape[-1]
        if self.kernel and rows <= gemv4.MAX_ROWS:
            y = gemv4.launch(x.reshape(rows, x.shape[-1]), self.packed, self.config, table=self.table)
            y = y.reshape(*x.shape[:-1], self.out_features)
        else:
            y = gemv4.linear(x, self.packed)
        return y if self.bias is None else y + self.bias.to(y.dtype)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, nf4 group {self.packed.group}"
                f"{', absmax quantized' if self.packed.nested else ''}, kernel={self.kernel}")


def pack(model: Any, config: gemv4.KernelConfig = gemv4.DEFAULT_CONFIG) -> int:
    """Replace every :func:`packable` linear of ``model`` in place; returns how many (on a second call, the first
    call's count: nothing more is done)."""
    if MARK in model.__dict__:
        return int(model.__dict__[MARK])
    count = 0
    with torch.no_grad():
        for module in list(model.modules()):
            for name, child in list(module._modules.items()):
                if name != "base_layer" and packable(child):  # peft's adapted layers keep their base layer
                    module._modules[name] = Packed4Linear.of(child, config)
                    count += 1
    model.__dict__[MARK] = count
    if count:
        log.info("%d NF4 linears multiplied by gemma-run's 4-bit kernel in the decode step", count)
    return count


def count(model: Any) -> int:
    return int(model.__dict__.get(MARK, 0))


def unpack(model: Any) -> int:
    """Put the original bitsandbytes modules back (fused projections must be undone first); returns how many."""
    restored = 0
    with torch.no_grad():
        for module in list(model.modules()):
            for name, child in list(module._modules.items()):
                if type(child) is Packed4Linear:
                    module._modules[name] = child.restore()
                    restored += 1
    model.__dict__.pop(MARK, None)
    return restored


def stack(parts: list[Packed4Linear]) -> gemv4.Packed4:
    """Siblings' weights as one stacked weight whose buffers become their storage: each original weight (and
    its absmax) a view of its rows of the stacked one, each part's ``packed`` a view too. Nothing is copied but
    into the stacked buffers, and the originals stay exact for :func:`unpack`."""
    stacked = gemv4.stack([p.packed for p in parts])
    rows = inner = 0
    for part in parts:
        p, original = part.packed, part._original[0]
        n = p.out_features
        qweight = stacked.qweight[rows:rows + n]
        scale = stacked.scale[rows:rows + n]
        state = original.weight.quant_state
        original.weight.data = qweight.view(-1, 1)
        state.absmax = scale.view(-1)  # uint8 codes or fp32 absmax, as it was
        view = {"qweight": qweight, "scale": scale}
        if p.nested:
            m = p.scale_scale.numel()
            state.state2.absmax = stacked.scale_scale[inner:inner + m]
            view.update(scale_scale=state.state2.absmax, scale_offset=stacked.scale_offset[inner:inner + m])
            inner += m
        part.packed = replace(p, **view)
        rows += n
    return stacked
