"""Sibling projections that read the same input fused into one matrix: q/k/v of attention, gate/up of the MLP.

Why: a batch-1 decode step is a series of matrix-vector products, each bound by the time to read its weights.
Small ones read below the bandwidth a large one reaches (each kernel has a ramp-up and a tail, and a recorded
graph still pays a gap between kernels). Reading q, k and v as one [q+k+v, hidden] matrix, and gate and up as
one, makes each layer three fewer products: on a random gemma3_4b in bf16 (H100, batch 1, task=bench) 258.1
against 254.9 tok/s (docs/benchmarks.md).

How, without touching the model's code: the modules stay where the model calls them (``self.q_proj(x)``,
``self.k_proj(x)``, ...), each replaced by a part (``PartLinear``) of one ``FusedLinear`` that holds the
concatenated weight. The first part called with an input computes the whole product and keeps it; the others
return their slice of it when called with the same input tensor (anything else computes afresh, so a model that
calls them differently stays correct). The kept product is dropped once every part has taken its slice. This
traces into one matrix product under torch.compile, and the same code runs eagerly (the prompt's pass).

Plain ``torch.nn.Linear`` modules are fused, and so are torchao's int4 linears in the CUDA layout that
``quant=int4`` loads (``Int4TilePackedTo4dTensor``, tinygemm). Their packed weight is tiled in blocks of 8 output
rows, so siblings stack row-block by row-block into one packed weight (their scales and zeros side by side) that
tinygemm multiplies as one. The stacked weight also drops torchao's padding: that layout pads in_features to a
multiple of 1024 (gemma3_27b: 5376 -> 6144, 14% more bytes to read), where tinygemm's kernel needs a multiple of
its K tile (128). On an H100 a 27B layer's int4 products went 0.158 -> 0.122 ms (bench/kernels_4bit.py; outputs
bit-identical). bitsandbytes' layers, peft's adapters and anything else are left as they are. Used by the fast engine
(:mod:`gemma_run.infer.fast`, ``generation.fuse_projections``); the model's state dict changes its names (one
``..._fused`` module per group), so it is for inference on a loaded model, not for saving.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from typing import Any

# sibling modules that a decoder layer calls on one input, in the order the fused weight stacks them
GROUPS: tuple[tuple[str, ...], ...] = (("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj"))
# rows per tile of tinygemm's packed int4 weight (qdata: [N / 8, K / (inner_k_tiles * 16), 32, inner_k_tiles / 2])
TILE_N = 8
TORCHAO_K_PAD = 1024  # torchao's Int4TilePackedTo4dTensor pads in_features to a multiple of this
MARK = "_gemma_run_fused_projections"  # set on a model once fused: the number of groups (fusing is idempotent)


def fuse(model: Any) -> int:
    """Fuse every group of :data:`GROUPS` that qualifies, in place; returns how many groups the model has fused
    (on a second call, the first call's count: nothing more is done)."""
    import torch

    if MARK in model.__dict__:
        return int(model.__dict__[MARK])
    fused_linear, part_cls, fused_int4 = _classes()
    count = 0
    # plain tensors even when called inside inference_mode (a generate call): the model may train afterwards
    with torch.inference_mode(False), torch.no_grad():
        for module, names, linears in _sites(model):
            kind = _kind(linears)
            if kind is not None:
                fused = fused_linear(linears) if kind == "plain" else fused_int4(linears)
                module.add_module("_".join(n.split("_")[0] for n in names) + "_fused", fused)
                for index, name in enumerate(names):
                    module._modules[name] = part_cls(fused, index)
                count += 1
    model.__dict__[MARK] = count
    return count


def unfuse(model: Any) -> int:
    """Put plain ``torch.nn.Linear`` modules back where :func:`fuse` put parts (weights copied out of the fused
    matrix), so the model is as loaded again (peft can wrap its projections, its state dict has their names);
    returns how many groups were undone."""
    import torch

    _, part_cls, fused_int4 = _classes()
    count = 0
    with torch.inference_mode(False), torch.no_grad():
        for module, names, parts in _sites(model):
            if not all(type(p) is part_cls for p in parts):
                continue
            fused = parts[0]._fused[0]
            if isinstance(fused, fused_int4):
                linears = fused.unstack()
                for name, linear in zip(names, linears, strict=True):
                    module._modules[name] = linear
                _drop(module, fused)
                count += 1
                continue
            start = 0
            for name, size in zip(names, fused.sizes, strict=True):
                linear = torch.nn.Linear(fused.in_features, size, bias=fused.bias is not None,
                                         device=fused.weight.device, dtype=fused.weight.dtype)
                linear.weight.copy_(fused.weight[start:start + size])
                linear.weight.requires_grad_(fused.weight.requires_grad)
                if fused.bias is not None:
                    linear.bias.copy_(fused.bias[start:start + size])
                    linear.bias.requires_grad_(fused.bias.requires_grad)
                module._modules[name] = linear
                start += size
            _drop(module, fused)
            count += 1
    model.__dict__.pop(MARK, None)
    return count


def _drop(module: Any, child: Any) -> None:
    for name, value in list(module._modules.items()):
        if value is child:
            del module._modules[name]


def _sites(model: Any) -> Iterator[tuple[Any, tuple[str, ...], list[Any]]]:
    """(module, names, its children of those names: None where missing) for every module and group of GROUPS."""
    for module in list(model.modules()):
        for names in GROUPS:
            yield module, names, [module._modules.get(n) for n in names]


def _kind(linears: list[Any]) -> str | None:
    """"plain" or "int4" when the linears can be fused as that kind, else None."""
    import torch

    if not all(type(m) is torch.nn.Linear and not hasattr(m, "_hf_hook") for m in linears):
        return None  # missing, quantized by bitsandbytes, adapted (peft), or moved by accelerate's hooks
    weights = [m.weight for m in linears]
    first = weights[0]
    if len({m.bias is None for m in linears}) != 1 or any(
            w.shape[1] != first.shape[1] or w.dtype != first.dtype or w.device != first.device for w in weights):
        return None
    if all(type(w.data) is torch.Tensor for w in weights):
        return "plain"
    if all(_tile_packed(w) for w in weights):
        sizes = {(tuple(w.block_size), tuple(w.qdata.shape[2:])) for w in weights}
        if len(sizes) == 1 and all(w.shape[0] % TILE_N == 0 for w in weights):
            return "int4"
    return None


def stackable_int4(linears: list[Any]) -> bool:
    """Whether :func:`stack_int4` can hold these torchao int4 linears (CUDA layout, whole row tiles, one input
    width, group size and tiling)."""
    return _kind(linears) == "int4"


def stack_int4(linears: list[Any]) -> Any:
    """torchao int4 linears (CUDA layout) of one input as one module: their rows stacked, without torchao's
    in_features padding, called as one linear of all their rows (quant.lm_head=int4's output layer, quantized
    in row chunks)."""
    return _classes()[2](linears)


def _tile_packed(weight: Any) -> bool:
    """torchao's CUDA int4 layout (tinygemm), without an activation pre-scale (AWQ-style), which the stacked
    product does not apply."""
    return (type(weight).__name__ == "Int4TilePackedTo4dTensor" and getattr(weight, "act_pre_scale", None) is None
            and weight.qdata.dim() == 4)


@functools.cache
def _classes() -> tuple[type, type, type]:
    """(FusedLinear, PartLinear, FusedInt4Linear), defined on first use so that importing this module does not
    import torch."""
    import math

    import torch
    import torch.nn.functional as F

    class Fused(torch.nn.Module):
        """One product whose output is its parts' outputs side by side; ``product`` is the subclass's."""

        def __init__(self, linears: list[Any]) -> None:
            super().__init__()
            self.sizes = [int(m.out_features) for m in linears]
            self.in_features = int(linears[0].in_features)
            bias = linears[0].bias
            self.bias = None if bias is None else torch.nn.Parameter(torch.cat([m.bias for m in linears]),
                                                                     requires_grad=bias.requires_grad)
            self._input: Any = None  # the input whose product is kept
            self._parts: Any = None
            self._left = 0  # parts that have not taken their slice of the kept product

        def product(self, x: Any) -> Any:
            raise NotImplementedError

        def forward(self, x: Any) -> Any:  # the whole product, when the module stands alone (one part)
            return self.product(x)

        def part(self, x: Any, index: int) -> Any:
            if self._input is not x:
                self._parts = self.product(x).split(self.sizes, dim=-1)
                self._input, self._left = x, len(self.sizes)
            out = self._parts[index]
            self._left -= 1
            if self._left == 0:
                self._input = self._parts = None
            return out

        def extra_repr(self) -> str:
            return f"in_features={self.in_features}, out_features={self.sizes}, bias={self.bias is not None}"

    class FusedLinear(Fused):
        """Plain linears: their weights concatenated."""

        def __init__(self, linears: list[Any]) -> None:
            super().__init__(linears)
            self.weight = torch.nn.Parameter(torch.cat([m.weight for m in linears]),
                                             requires_grad=linears[0].weight.requires_grad)

        def product(self, x: Any) -> Any:
            return F.linear(x, self.weight, self.bias)

        def rows(self, index: int) -> Any:
            start = sum(self.sizes[:index])
            return self.weight[start: start + self.sizes[index]]

    class FusedInt4Linear(Fused):
        """torchao int4 linears (tile_packed_to_4d): packed weights stacked by row tiles and cut to the K their
        kernel needs, scales and zeros side by side; multiplied by tinygemm (``aten._weight_int4pack_mm``)."""

        def __init__(self, linears: list[Any]) -> None:
            super().__init__(linears)
            first = linears[0].weight
            self.group = int(first.block_size[-1])
            self.k_tile = int(first.qdata.shape[-1]) * 2 * 16  # inner_k_tiles x 16
            self.k_stored = -(-self.in_features // math.lcm(self.k_tile, self.group)) * math.lcm(self.k_tile,
                                                                                                   self.group)
            tiles, groups = self.k_stored // self.k_tile, self.k_stored // self.group
            self.register_buffer("qdata", torch.cat([m.weight.qdata[:, :tiles] for m in linears]).contiguous())
            self.register_buffer("scale_and_zero", torch.cat([m.weight.scale_and_zero[:groups] for m in linears],
                                                             dim=1).contiguous())

        def product(self, x: Any) -> Any:
            a = x.reshape(-1, x.shape[-1]).to(torch.bfloat16)
            if self.k_stored > self.in_features:
                a = F.pad(a, (0, self.k_stored - self.in_features))
            y = torch.ops.aten._weight_int4pack_mm(a.contiguous(), self.qdata, self.group, self.scale_and_zero)
            y = y.reshape(*x.shape[:-1], y.shape[-1]).to(x.dtype)
            return y if self.bias is None else y + self.bias

        def rows(self, index: int) -> Any:
            """The part's packed rows (int32 tiles of 8 rows)."""
            start = sum(self.sizes[:index])
            return self.qdata[start // TILE_N: (start + self.sizes[index]) // TILE_N]

        def unstack(self) -> list[Any]:
            """The parts as torchao's int4 linears again, in its layout as loaded (in_features padded to a
            multiple of 1024 with zeros, which meet the zeros torchao pads the input with)."""
            from torchao.quantization import Int4TilePackedTo4dTensor

            padded = -(-self.in_features // TORCHAO_K_PAD) * TORCHAO_K_PAD
            out, start = [], 0
            for size in self.sizes:
                qdata = self.qdata[start // TILE_N: (start + size) // TILE_N]
                qdata = F.pad(qdata, (0, 0, 0, 0, 0, padded // self.k_tile - qdata.shape[1]))
                sz = self.scale_and_zero[:, start: start + size]
                sz = F.pad(sz, (0, 0, 0, 0, 0, padded // self.group - sz.shape[0]))
                weight = Int4TilePackedTo4dTensor(qdata.contiguous(), sz.contiguous(), [1, self.group],
                                                  torch.Size([size, self.in_features]))
                linear = torch.nn.Linear(self.in_features, size, bias=self.bias is not None, device="meta")
                linear.weight = torch.nn.Parameter(weight, requires_grad=False)
                if self.bias is not None:
                    linear.bias = torch.nn.Parameter(self.bias[start: start + size].clone(),
                                                     requires_grad=self.bias.requires_grad)
                out.append(linear)
                start += size
            return out

    class PartLinear(torch.nn.Module):
        """Stands where one of the fused linears stood: its slice of the fused product."""

        def __init__(self, fused: Any, index: int) -> None:
            super().__init__()
            self._fused = [fused]  # a list, so the fused module is not registered twice (it is the parent's child)
            self.index = index
            self.in_features = fused.in_features
            self.out_features = fused.sizes[index]

        def forward(self, x: Any) -> Any:
            return self._fused[0].part(x, self.index)

        @property
        def weight(self) -> Any:
            """Its own rows of the fused weight (int4: of the packed tiles), so code that reads
            ``q_proj.weight`` (device, shape[0] of a plain weight) keeps working."""
            return self._fused[0].rows(self.index)

        def extra_repr(self) -> str:
            return f"part {self.index} of the fused linear, out_features={self.out_features}"

    return FusedLinear, PartLinear, FusedInt4Linear
