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

Only plain ``torch.nn.Linear`` modules with plain weights are fused: quantized layers (bitsandbytes, torchao's
tensor subclasses), peft's adapters and anything else are left as they are. Used by the fast engine
(:mod:`gemma_run.infer.fast`, ``generation.fuse_projections``); the model's state dict changes its names (one
``..._fused.weight`` per group), so it is for inference on a loaded model, not for saving.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from typing import Any

# sibling modules that a decoder layer calls on one input, in the order the fused weight stacks them
GROUPS: tuple[tuple[str, ...], ...] = (("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj"))
MARK = "_gemma_run_fused_projections"  # set on a model once fused: the number of groups (fusing is idempotent)


def fuse(model: Any) -> int:
    """Fuse every group of :data:`GROUPS` that qualifies, in place; returns how many groups the model has fused
    (on a second call, the first call's count: nothing more is done)."""
    import torch

    if MARK in model.__dict__:
        return int(model.__dict__[MARK])
    fused_linear, part_cls = _classes()
    count = 0
    # plain tensors even when called inside inference_mode (a generate call): the model may train afterwards
    with torch.inference_mode(False), torch.no_grad():
        for module, names, linears in _sites(model):
            if _fusable(linears):
                fused = fused_linear(linears)
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

    _, part_cls = _classes()
    count = 0
    with torch.inference_mode(False), torch.no_grad():
        for module, names, parts in _sites(model):
            if not all(type(p) is part_cls for p in parts):
                continue
            fused = parts[0]._fused[0]
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
            for child, value in list(module._modules.items()):
                if value is fused:
                    del module._modules[child]
            count += 1
    model.__dict__.pop(MARK, None)
    return count


def _sites(model: Any) -> Iterator[tuple[Any, tuple[str, ...], list[Any]]]:
    """(module, names, its children of those names: None where missing) for every module and group of GROUPS."""
    for module in list(model.modules()):
        for names in GROUPS:
            yield module, names, [module._modules.get(n) for n in names]


def _fusable(linears: list[Any]) -> bool:
    import torch

    if not all(type(m) is torch.nn.Linear and not hasattr(m, "_hf_hook") for m in linears):
        return False  # missing, quantized, adapted (peft), or moved by accelerate's hooks
    weights = [m.weight for m in linears]
    if any(type(w.data) is not torch.Tensor for w in weights):  # tensor-subclass (quantized) weights
        return False
    first = weights[0]
    same = all(w.shape[1] == first.shape[1] and w.dtype == first.dtype and w.device == first.device
               for w in weights)
    biases = {m.bias is None for m in linears}
    return same and len(biases) == 1


@functools.cache
def _classes() -> tuple[type, type]:
    """(FusedLinear, PartLinear), defined on first use so that importing this module does not import torch."""
    import torch
    import torch.nn.functional as F

    class FusedLinear(torch.nn.Module):
        """One linear layer whose output is its parts' outputs side by side."""

        def __init__(self, linears: list[Any]) -> None:
            super().__init__()
            self.sizes = [int(m.out_features) for m in linears]
            self.in_features = int(linears[0].in_features)
            self.weight = torch.nn.Parameter(torch.cat([m.weight for m in linears]),
                                             requires_grad=linears[0].weight.requires_grad)
            bias = linears[0].bias
            self.bias = None if bias is None else torch.nn.Parameter(torch.cat([m.bias for m in linears]),
                                                                     requires_grad=bias.requires_grad)
            self._input: Any = None  # the input whose product is kept
            self._parts: Any = None
            self._left = 0  # parts that have not taken their slice of the kept product

        def part(self, x: Any, index: int) -> Any:
            if self._input is not x:
                self._parts = F.linear(x, self.weight, self.bias).split(self.sizes, dim=-1)
                self._input, self._left = x, len(self.sizes)
            out = self._parts[index]
            self._left -= 1
            if self._left == 0:
                self._input = self._parts = None
            return out

        def extra_repr(self) -> str:
            return f"in_features={self.in_features}, out_features={self.sizes}, bias={self.bias is not None}"

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
        def weight(self) -> Any:  # code that reads ``q_proj.weight`` (dtype, device, shape) keeps working
            fused = self._fused[0]
            start = sum(fused.sizes[: self.index])
            return fused.weight[start: start + self.out_features]

        def extra_repr(self) -> str:
            return f"part {self.index} of the fused linear, out_features={self.out_features}"

    return FusedLinear, PartLinear
