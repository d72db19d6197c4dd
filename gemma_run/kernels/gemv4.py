"""A 4-bit matrix-vector product for decode (1 to 8 rows of activations): each packed weight byte is read once
and dequantized in registers, for two formats:

- ``int4``: asymmetric 4-bit with one (scale, zero) pair per ``group`` weights of a row, the convention of
  torchao's int4 and tinygemm: ``w = (q - 8) * scale + zero``;
- ``nf4``: bitsandbytes' NormalFloat4, a 16-value table scaled by the absolute maximum of each block of
  ``group`` weights: ``w = NF4[q] * absmax`` (the values bitsandbytes stores for ``quant=4bit``).

Layout (:class:`Packed4`): ``qweight`` is uint8 ``[out, in / 2]``; byte ``j`` of a row holds input ``2j`` in its
low nibble and ``2j + 1`` in its high nibble (``lanes``: the inputs of each group in another order, below).
``scale`` (and ``zero`` for int4) are ``[out, in / group]``. NF4's absmax can itself be quantized, as
bitsandbytes' double quantization stores it (``quant.double_quant``): then ``scale`` holds uint8 codes and the
absmax of group ``b`` (counted row by row over the whole matrix) is
``scale_code[scale[b]] * scale_scale[b // scale_block] + scale_offset[b // scale_block]``.
:func:`from_bitsandbytes` takes a loaded ``quant=4bit`` weight as it is (the same bytes and values), and
:func:`stack` puts several weights of one input under each other (the fast engine's fused projections).

:func:`to_lanes` reorders the inputs inside each group for the word-wise kernel: read as 32-bit words (eight
nibbles, lowest first), nibble ``i`` of word ``j`` of a group then holds input ``i * group / 8 + j`` of the group
instead of ``8j + i``, so that the activations each nibble position multiplies are contiguous (one vector load
for a tile of words instead of a load per word).

:func:`gemv` runs the Triton kernel on CUDA tensors when Triton imports, and otherwise the reference path
(:func:`reference_matmul`: the same packed weights dequantized, then one matmul), which defines what the kernel
computes. The kernel is split over output rows and, when there are too few rows to fill the GPU, over the
input dimension (partial sums added atomically into an fp32 output).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

# bitsandbytes' NF4 code (bitsandbytes.functional.get_4bit_type("nf4")), lowest to highest
NF4 = (-1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
       -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
       0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0)
MAX_ROWS = 8  # activation rows the kernel takes; more (a prompt's prefill) go through the reference path
TARGET_PROGRAMS = 264  # enough programs to keep every SM of an H100/H200 (132) busy twice over


@dataclass(frozen=True)
class Packed4:
    """A Linear weight ``[out_features, in_features]`` in 4 bits (see the module's docstring for the layout)."""

    kind: str  # "int4" | "nf4"
    qweight: Any  # uint8 [out, in / 2]
    scale: Any  # [out, in / group]: int4's scale, nf4's absmax (uint8 codes when scale_code is given)
    zero: Any  # int4: [out, in / group]; nf4: None
    group: int
    scale_code: Any = None  # nf4 with quantized absmax: fp32 [256], the codes' values
    scale_scale: Any = None  # fp32 [groups / scale_block]: each block of codes' scale
    scale_offset: Any = None  # fp32 [groups / scale_block]: each block of codes' offset
    scale_block: int = 256
    lanes: bool = False  # inputs of each group in lane order (to_lanes)

    @property
    def nested(self) -> bool:
        return self.scale_code is not None

    @property
    def out_features(self) -> int:
        return int(self.qweight.shape[0])

    @property
    def in_features(self) -> int:
        return int(self.qweight.shape[1]) * 2

    def nbytes(self) -> int:
        """Bytes a product reads from the weights: the packed values and their scales (and zeros)."""
        parts = [self.qweight, self.scale, self.zero, self.scale_scale, self.scale_offset]
        return sum(t.numel() * t.element_size() for t in parts if t is not None)


def _pack_nibbles(q: Any) -> Any:
    """Values 0..15 ``[out, in]`` -> uint8 ``[out, in / 2]``, even inputs in the low nibble."""
    import torch

    q = q.to(torch.uint8)
    return q[:, 0::2] | (q[:, 1::2] << 4)


def _unpack_nibbles(packed: Any) -> Any:
    """uint8 ``[out, in / 2]`` -> int64 ``[out, in]`` (0..15)."""
    import torch

    low, high = (packed & 0xF).long(), (packed >> 4).long()
    return torch.stack([low, high], dim=-1).flatten(-2)


def _check_shape(weight: Any, group: int) -> tuple[int, int]:
    out, inp = weight.shape
    if group % 2 or inp % group:
        raise ValueError(f"in_features {inp} is not a multiple of the group size {group} (an even number)")
    return out, inp


def pack_int4(weight: Any, group: int = 128, scale_dtype: Any = None) -> Packed4:
    """``weight`` quantized to asymmetric int4 with one (scale, zero) per ``group`` inputs of a row (min to max
    over 16 levels); scales and zeros in ``scale_dtype`` (default: the weight's dtype)."""
    out, inp = _check_shape(weight, group)
    w = weight.float().reshape(out, inp // group, group)
    lo, hi = w.amin(-1, keepdim=True), w.amax(-1, keepdim=True)
    scale = ((hi - lo) / 15).clamp(min=1e-10)
    q = ((w - lo) / scale).round().clamp(0, 15).reshape(out, inp)
    dtype = scale_dtype or weight.dtype
    zero = lo + 8 * scale  # so that (q - 8) * scale + zero spans lo .. hi
    return Packed4("int4", _pack_nibbles(q), scale.reshape(out, -1).to(dtype), zero.reshape(out, -1).to(dtype), group)


def pack_nf4(weight: Any, group: int = 64) -> Packed4:
    """``weight`` in NF4 as bitsandbytes stores it without double quantization: each value the nearest entry of
    the NF4 table after dividing by its block's absolute maximum (fp32)."""
    import torch

    out, inp = _check_shape(weight, group)
    w = weight.float().reshape(out, inp // group, group)
    absmax = w.abs().amax(-1, keepdim=True)
    normed = (w / absmax.clamp(min=1e-10)).reshape(out, inp)
    table = torch.tensor(NF4, dtype=torch.float32, device=weight.device)
    # nearest table entry: the midpoints between neighbours split [-1, 1] into 16 bins
    q = torch.bucketize(normed, (table[1:] + table[:-1]) / 2)
    return Packed4("nf4", _pack_nibbles(q), absmax.reshape(out, -1), None, group)


def _lane_order(q: Any, group: int, inverse: bool = False) -> Any:
    """Values ``[out, in]`` in natural order -> the order :func:`to_lanes` stores (``inverse``: back)."""
    out, inp = q.shape
    words = group // 8
    shape = (out, inp // group, words, 8) if inverse else (out, inp // group, 8, words)
    return q.reshape(shape).transpose(-1, -2).reshape(out, inp)


def to_lanes(p: Packed4) -> Packed4:
    """``p`` with the inputs of each group in lane order (the module's docstring); the same weight."""
    from dataclasses import replace

    if p.lanes:
        return p
    if p.group % 8:
        raise ValueError(f"lane order needs groups of whole 32-bit words (a multiple of 8 inputs), not {p.group}")
    return replace(p, qweight=_pack_nibbles(_lane_order(_unpack_nibbles(p.qweight), p.group)), lanes=True)


def dequantize(p: Packed4, start: int = 0, stop: int | None = None) -> Any:
    """The fp32 weight ``[out, in]`` that ``p`` stands for (the reference for the kernel); rows ``start:stop``
    only when given."""
    import torch

    rows = slice(start, stop)
    q = _unpack_nibbles(p.qweight[rows])
    if p.lanes:
        q = _lane_order(q, p.group, inverse=True)
    scale = absmax(p, start, stop).repeat_interleave(p.group, dim=1)
    if p.kind == "nf4":
        return torch.tensor(NF4, dtype=torch.float32, device=q.device)[q] * scale
    return (q.float() - 8) * scale + p.zero[rows].float().repeat_interleave(p.group, dim=1)


def absmax(p: Packed4, start: int = 0, stop: int | None = None) -> Any:
    """The fp32 scale of every group ``[out, in / group]`` (the quantized absmax decoded), of rows start:stop."""
    import torch

    scale = p.scale[start:stop]
    if not p.nested:
        return scale.float()
    rows, groups = scale.shape
    codes = scale.flatten().long()  # row by row, as the blocks count them
    index = (torch.arange(rows * groups, device=scale.device) + start * groups) // p.scale_block
    return (p.scale_code[codes] * p.scale_scale[index] + p.scale_offset[index]).view(rows, groups)


def linear(x: Any, p: Packed4, chunk: int = 4096) -> Any:
    """``x @ W.T`` for any number of rows (a prompt's pass), as bitsandbytes computes it: the weight dequantized
    to ``x``'s dtype, ``chunk`` output rows at a time (bounding the transient), and one matmul each."""
    import torch
    import torch.nn.functional as F

    parts = [F.linear(x, dequantize(p, start, start + chunk).to(x.dtype))
             for start in range(0, p.out_features, chunk)]
    return parts[0] if len(parts) == 1 else torch.cat(parts, dim=-1)


def from_bitsandbytes(weight: Any, swapped: bool = False) -> Packed4:
    """A bitsandbytes NF4 weight (``Params4bit`` of a loaded ``quant=4bit`` model, with its ``quant_state``) in
    this layout: its bytes with each byte's nibbles swapped (bitsandbytes keeps the first input high), its absmax
    as stored (quantized or not). Dequantized, it is exactly the weight bitsandbytes dequantizes. ``swapped``:
    the weight's bytes are already swapped (in place), and the packed weight is a view of them."""
    import torch

    state = weight.quant_state
    if state.quant_type != "nf4":
        raise ValueError(f"only NF4 weights, not {state.quant_type}")
    if getattr(state, "packing_format_for_cpu", False):
        raise ValueError("the weight is in the layout bitsandbytes repacks it to for its AVX512-BF16 CPU kernel, "
                         "not its own")
    out, inp = (int(n) for n in state.shape)
    if inp % state.blocksize or state.blocksize % 2:
        raise ValueError(f"in_features {inp} is not a multiple of the block size {state.blocksize}")
    if not torch.equal(state.code.float().cpu(), torch.tensor(NF4)):
        raise ValueError("the weight's 4-bit code is not bitsandbytes' NF4 table")
    data = weight.data.view(torch.uint8).reshape(out, inp // 2)
    qweight = data if swapped else ((data & 0xF) << 4) | (data >> 4)
    groups = inp // state.blocksize
    if not state.nested:
        return Packed4("nf4", qweight, state.absmax.float().reshape(out, groups), None, state.blocksize)
    inner = state.state2
    blocks = -(-out * groups // inner.blocksize)
    offset = torch.full((blocks,), float(state.offset), dtype=torch.float32, device=data.device)
    return Packed4("nf4", qweight, state.absmax.reshape(out, groups), None, state.blocksize,
                   scale_code=inner.code.float(), scale_scale=inner.absmax.float()[:blocks], scale_offset=offset,
                   scale_block=int(inner.blocksize))


def stack(packs: list[Packed4]) -> Packed4:
    """Weights of one input as one ``[sum of out, in]`` weight (their rows under each other)."""
    import torch

    first = packs[0]
    same = {(p.kind, p.group, p.in_features, p.nested, p.scale_block, p.scale.dtype, p.lanes) for p in packs}
    if len(same) != 1:
        raise ValueError(f"cannot stack 4-bit weights of different formats: {sorted(map(str, same))}")
    if first.nested:
        if any(p.scale.numel() % p.scale_block for p in packs):
            raise ValueError("quantized absmax in blocks that straddle two weights")
        if any(not torch.equal(p.scale_code, first.scale_code) for p in packs):
            raise ValueError("quantized absmax with different codes")

    def cat(name: str) -> Any:
        parts = [getattr(p, name) for p in packs]
        return None if parts[0] is None else torch.cat(parts)

    return Packed4(first.kind, cat("qweight"), cat("scale"), cat("zero"), first.group, first.scale_code,
                   cat("scale_scale"), cat("scale_offset"), first.scale_block, first.lanes)


def reference_matmul(x: Any, p: Packed4) -> Any:
    """``x @ W.T`` with ``W = dequantize(p)``, accumulated in fp32, returned in ``x``'s dtype."""
    return (x.float() @ dequantize(p).T).to(x.dtype)


@dataclass(frozen=True)
class KernelConfig:
    """How the kernel tiles a product: ``block_n`` outputs and ``groups`` groups of inputs per program step,
    ``dot`` for the tensor cores (rows padded to 16) instead of a sum of products, ``split_k`` input splits
    (None: enough for TARGET_PROGRAMS programs), and Triton's ``num_warps`` / ``num_stages``. ``words``: one
    activation row goes through the word-wise kernel (``gemv4_triton.kernel_words``: 32-bit loads, one
    reduction at the end); several rows, or weights whose rows are not whole words, through the byte-wise one
    (weights in lane order, :func:`to_lanes`, only through the word-wise kernel)."""

    block_n: int = 32
    groups: int = 2
    dot: bool = False
    split_k: int | None = None
    num_warps: int = 4
    num_stages: int = 3
    words: bool = False


DEFAULT_CONFIG = KernelConfig()


def gemv(x: Any, p: Packed4, *, use_kernel: bool | None = None, config: KernelConfig = DEFAULT_CONFIG) -> Any:
    """``x @ W.T`` for ``x`` of shape ``[..., in_features]``: the Triton kernel when ``use_kernel`` (None: on a
    CUDA device with Triton installed and at most MAX_ROWS rows), else :func:`reference_matmul`."""
    rows = x.numel() // x.shape[-1]
    if use_kernel is None:
        use_kernel = x.is_cuda and rows <= MAX_ROWS and triton_available()
    if not use_kernel:
        return reference_matmul(x, p)
    if rows > MAX_ROWS:
        raise ValueError(f"the 4-bit kernel takes at most {MAX_ROWS} rows of activations, not {rows}")
    return launch(x.reshape(rows, x.shape[-1]), p, config).reshape(*x.shape[:-1], p.out_features)


@functools.cache
def triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def launch_shape(out_features: int, in_features: int, group: int, block_n: int, split_k: int | None = None,
                 groups: int = 1) -> tuple[int, int, int]:
    """(row blocks, input splits, inputs per split): split the input dimension only as far as needed for
    TARGET_PROGRAMS programs, each split a whole number of the kernel's steps (``groups`` groups) where it can."""
    blocks = -(-out_features // block_n)
    steps = -(-in_features // (group * groups))
    split = min(steps, split_k or max(1, -(-TARGET_PROGRAMS // blocks)))
    per_split = -(-steps // split) * group * groups
    return blocks, -(-in_features // per_split), per_split


def launch(x: Any, p: Packed4, config: KernelConfig = DEFAULT_CONFIG, table: Any = None) -> Any:
    """The Triton kernel on ``x`` [rows <= MAX_ROWS, in_features] (CUDA): ``x @ W.T`` in ``x``'s dtype.
    ``table``: the NF4 table on the device (default: one cached per device)."""
    import torch

    from gemma_run.kernels import gemv4_triton

    rows, k = x.shape
    if k != p.in_features:
        raise ValueError(f"activations have {k} inputs, the weight {p.in_features}")
    blocks, splits, per_split = launch_shape(p.out_features, k, p.group, config.block_n, config.split_k,
                                             config.groups)
    y = (torch.zeros if splits > 1 else torch.empty)(rows, p.out_features, dtype=torch.float32, device=x.device)
    if table is None:
        table = _table(x.device) if p.kind == "nf4" else p.scale  # unused by int4: any tensor of the device
    spare = p.scale  # stands for the pointers a format does not use
    formats = dict(GROUP=p.group, GROUPS=config.groups, BLOCK_N=config.block_n, NF4=p.kind == "nf4",
                   NESTED=p.nested, SCALE_BLOCK=p.scale_block, ATOMIC=splits > 1, num_warps=config.num_warps,
                   num_stages=config.num_stages)
    pointers = (x, p.qweight, p.scale, p.zero if p.zero is not None else spare, table,
                p.scale_code if p.nested else spare, p.scale_scale if p.nested else spare,
                p.scale_offset if p.nested else spare, y)
    if config.words and rows == 1 and words_fit(p) and x.stride(-1) == 1:
        gemv4_triton.kernel_words[(blocks, splits)](*pointers, p.out_features, k // 8, per_split // 8,
                                                    p.qweight.stride(0) // 4, p.scale.stride(0), LANES=p.lanes,
                                                    **formats)
        return y.to(x.dtype)
    if p.lanes:
        raise ValueError("4-bit weights in lane order go through the word-wise kernel only: one activation row, "
                         "KernelConfig(words=True)")
    padded_rows = max(16 if config.dot else 1, 1 << (rows - 1).bit_length())
    gemv4_triton.kernel[(blocks, splits)](
        *pointers, rows, p.out_features, k, per_split, x.stride(0), p.qweight.stride(0), p.scale.stride(0),
        y.stride(0), ROWS=padded_rows, DOT=config.dot, **formats)
    return y.to(x.dtype)


def words_fit(p: Packed4) -> bool:
    """Whether the word-wise kernel can read ``p``: rows of whole 32-bit words, aligned, groups of whole words."""
    return (p.group % 8 == 0 and p.qweight.stride(-1) == 1 and p.qweight.stride(0) % 4 == 0
            and p.qweight.data_ptr() % 4 == 0)


@functools.cache
def _table(device: Any) -> Any:
    import torch

    return torch.tensor(NF4, dtype=torch.float32, device=device)
