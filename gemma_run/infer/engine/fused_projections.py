"""Sibling projections that read the same input fused into one matrix: q/k/v of attention, gate/up of the MLP.

Why: a batch-1 decode step is a series of matrix-vector products, each bound by the time to read its weights.
Small ones read below the bandwidth a large one reaches (each kernel has a ramp-up and a tail, and a recorded
graph still pays a gap between kernels). Reading q, k and v as one [q+k+v, hidden] matrix, and gate and up as
one, makes each layer three fewer, larger products.

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
its K tile (128), so a step reads fewer bytes for bit-identical outputs (bench/kernels_4bit.py compares the
layouts). quant=4bit's NF4 linears, once the engine has put them under gemma-run's 4-bit kernel
(``packed_4bit.Packed4Linear``), stack row by row into one buffer that stays their storage. bitsandbytes' own
layers, peft's adapters and anything else are left as they are. Used by the fast engine
(:mod:`gemma_run.infer.engine`, ``generation.fuse_projections``); the model's state dict changes its names (one
``..._fused`` module per group), so it is for inference on a loaded model, not for saving.
"""

from __future__ import annotations

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
    from gemma_run.infer.engine.fused_linear import FusedInt4Linear, FusedLinear, FusedPacked4Linear, PartLinear
    kinds = {"plain": FusedLinear, "int4": FusedInt4Linear, "packed4": FusedPacked4Linear}
    count = 0
    # plain tensors even when called inside inference_mode (a generate call): the model may train afterwards
    with torch.inference_mode(False), torch.no_grad():
        for module, names, linears in _sites(model):
            kind = _kind(linears)
            if kind is not None:
                fused = kinds[kind](linears)
                module.add_module("_".join(n.split("_")[0] for n in names) + "_fused", fused)
                for index, name in enumerate(names):
                    module._modules[name] = PartLinear(fused, index)
                count += 1
    model.__dict__[MARK] = count
    return count


def count(model: Any) -> int:
    """How many groups of projections the model has fused (0: none)."""
    return int(model.__dict__.get(MARK, 0))


def unfuse(model: Any) -> int:
    """Put plain ``torch.nn.Linear`` modules back where :func:`fuse` put parts (weights copied out of the fused
    matrix), so the model is as loaded again (peft can wrap its projections, its state dict has their names);
    returns how many groups were undone."""
    import torch

    from gemma_run.infer.engine.fused_linear import FusedInt4Linear, FusedPacked4Linear, PartLinear
    count = 0
    with torch.inference_mode(False), torch.no_grad():
        for module, names, parts in _sites(model):
            if not all(type(p) is PartLinear for p in parts):
                continue
            fused = parts[0]._fused[0]
            if isinstance(fused, FusedInt4Linear | FusedPacked4Linear):
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
    """"plain", "int4" or "packed4" when the linears can be fused as that kind, else None."""
    import torch

    if _packed4(linears):
        return "packed4"
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


def _packed4(linears: list[Any]) -> bool:
    """quant=4bit's NF4 linears under the 4-bit kernel (packed_4bit.Packed4Linear), of one input and format,
    each holding whole blocks of quantized absmax."""
    import torch

    from gemma_run.infer.engine.packed_4bit import Packed4Linear

    if not all(type(m) is Packed4Linear for m in linears):
        return False
    packs = [m.packed for m in linears]
    formats = {(p.in_features, p.group, p.nested, p.scale_block, p.scale.dtype, p.qweight.device) for p in packs}
    return (len(formats) == 1 and len({m.bias is None for m in linears}) == 1
            and not any(p.nested and p.scale.numel() % p.scale_block for p in packs)
            and all(torch.equal(p.scale_code, packs[0].scale_code) for p in packs if p.nested))


def stackable_int4(linears: list[Any]) -> bool:
    """Whether :func:`stack_int4` can hold these torchao int4 linears (CUDA layout, whole row tiles, one input
    width, group size and tiling)."""
    return _kind(linears) == "int4"


def stack_int4(linears: list[Any]) -> Any:
    """torchao int4 linears (CUDA layout) of one input as one module: their rows stacked, without torchao's
    in_features padding, called as one linear of all their rows (quant.lm_head=int4's output layer, quantized
    in row chunks)."""
    from gemma_run.infer.engine.fused_linear import FusedInt4Linear

    return FusedInt4Linear(linears)


def _tile_packed(weight: Any) -> bool:
    """torchao's CUDA int4 layout (tinygemm), without an activation pre-scale (AWQ-style), which the stacked
    product does not apply."""
    return (type(weight).__name__ == "Int4TilePackedTo4dTensor" and getattr(weight, "act_pre_scale", None) is None
            and weight.qdata.dim() == 4)
