"""The modules that stand for fused projections (:mod:`gemma_run.infer.engine.fused_projections` decides which
groups to fuse and puts them in place): one product for several linears of one input, and the parts that hand
each caller its slice. Imports torch: the fusing code imports this module only when it fuses."""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

from gemma_run.infer.engine.fused_projections import TILE_N, TORCHAO_K_PAD


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

class FusedPacked4Linear(Fused):
    """quant=4bit's NF4 linears as the 4-bit kernel takes them (:class:`~gemma_run.infer.engine.packed_4bit.
    Packed4Linear`): their weights stacked into one buffer that each original weight is a view of."""

    def __init__(self, linears: list[Any]) -> None:
        from gemma_run.infer.engine import packed_4bit

        super().__init__(linears)
        self._linears = list(linears)  # a list: not submodules (unstack gives them back, on the stacked storage)
        first = linears[0]
        self.packed = packed_4bit.stack(linears)
        self.config, self.kernel = first.config, first.kernel
        self.register_buffer("table", first.table, persistent=False)

    def product(self, x: Any) -> Any:
        from gemma_run.kernels import gemv4

        rows = x.numel() // x.shape[-1]
        if self.kernel and rows <= gemv4.MAX_ROWS:
            y = gemv4.launch(x.reshape(rows, x.shape[-1]), self.packed, self.config, table=self.table)
            y = y.reshape(*x.shape[:-1], y.shape[-1])
        else:
            y = gemv4.linear(x, self.packed)
        return y if self.bias is None else y + self.bias.to(y.dtype)

    def rows(self, index: int) -> Any:
        """The part's packed rows."""
        return self._linears[index].packed.qweight

    def unstack(self) -> list[Any]:
        return list(self._linears)

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
