"""The Triton kernel behind :func:`gemma_run.kernels.gemv4.gemv` (imported only when it runs: Triton is optional).

One program computes ``BLOCK_N`` outputs of every activation row over ``k_per_split`` inputs, ``GROUPS`` groups
at a time: it loads their packed bytes ``[BLOCK_N, GROUPS * GROUP / 2]`` once, splits each byte into its two
nibbles, turns them into weights with each group's scale (decoded first where NF4's absmax is itself quantized)
and zero, or the NF4 table, in registers, and multiplies them with the even and odd inputs of each activation
row: as a sum of products (``DOT`` off, best for one row) or on the tensor cores (``DOT`` on: the rows padded to
16, the weights in the activations' dtype). Partial sums go to an fp32 output, added atomically when the input
dimension is split over several programs.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def kernel(x_ptr, q_ptr, s_ptr, z_ptr, t_ptr, sc_ptr, ss_ptr, so_ptr, y_ptr, rows, n, k, k_per_split, stride_x,
           stride_q, stride_s, stride_y, GROUP: tl.constexpr, GROUPS: tl.constexpr, BLOCK_N: tl.constexpr,
           ROWS: tl.constexpr, NF4: tl.constexpr, NESTED: tl.constexpr, SCALE_BLOCK: tl.constexpr,
           ATOMIC: tl.constexpr, DOT: tl.constexpr):
    HALF: tl.constexpr = GROUP // 2
    BYTES: tl.constexpr = GROUPS * HALF  # packed bytes of one row per step
    out = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    out_ok = out < n
    byte = tl.arange(0, BYTES)
    group = tl.arange(0, GROUPS)
    row = tl.arange(0, ROWS)
    row_ok = row < rows
    acc = tl.zeros((ROWS, BLOCK_N), dtype=tl.float32)
    start = tl.program_id(1) * k_per_split
    end = tl.minimum(start + k_per_split, k)
    for k0 in range(start, end, GROUPS * GROUP):
        k_ok = k0 + 2 * byte < end
        packed = tl.load(q_ptr + out[:, None] * stride_q + (k0 // 2 + byte)[None, :],
                         mask=out_ok[:, None] & k_ok[None, :], other=0)
        g = k0 // GROUP + group
        g_ok = out_ok[:, None] & (g * GROUP < end)[None, :]
        if NESTED:  # the absmax quantized: a code, its block's scale and offset
            code = tl.load(s_ptr + out[:, None] * stride_s + g[None, :], mask=g_ok, other=0)
            block = (out[:, None] * (k // GROUP) + g[None, :]) // SCALE_BLOCK
            scale = (tl.load(sc_ptr + code.to(tl.int32)) * tl.load(ss_ptr + block, mask=g_ok, other=0.0)
                     + tl.load(so_ptr + block, mask=g_ok, other=0.0))
        else:
            scale = tl.load(s_ptr + out[:, None] * stride_s + g[None, :], mask=g_ok, other=0.0).to(tl.float32)
        scale = tl.reshape(scale, (BLOCK_N, GROUPS, 1))
        low = tl.reshape(packed & 0xF, (BLOCK_N, GROUPS, HALF))
        high = tl.reshape((packed >> 4) & 0xF, (BLOCK_N, GROUPS, HALF))
        if NF4:
            w_low = tl.load(t_ptr + low) * scale
            w_high = tl.load(t_ptr + high) * scale
        else:
            zero = tl.load(z_ptr + out[:, None] * stride_s + g[None, :], mask=g_ok, other=0.0).to(tl.float32)
            zero = tl.reshape(zero, (BLOCK_N, GROUPS, 1))
            w_low = (low.to(tl.float32) - 8.0) * scale + zero
            w_high = (high.to(tl.float32) - 8.0) * scale + zero
        w_low = tl.reshape(w_low, (BLOCK_N, BYTES))
        w_high = tl.reshape(w_high, (BLOCK_N, BYTES))
        x_at = x_ptr + row[:, None] * stride_x + (k0 + 2 * byte)[None, :]
        x_ok = row_ok[:, None] & k_ok[None, :]
        x_even = tl.load(x_at, mask=x_ok, other=0.0)
        x_odd = tl.load(x_at + 1, mask=x_ok, other=0.0)
        if DOT:
            acc = tl.dot(x_even, tl.trans(w_low.to(x_even.dtype)), acc)
            acc = tl.dot(x_odd, tl.trans(w_high.to(x_odd.dtype)), acc)
        else:
            acc += tl.sum(x_even.to(tl.float32)[:, None, :] * w_low[None, :, :]
                          + x_odd.to(tl.float32)[:, None, :] * w_high[None, :, :], axis=2)
    y_at = y_ptr + row[:, None] * stride_y + out[None, :]
    y_ok = row_ok[:, None] & out_ok[None, :]
    if ATOMIC:
        tl.atomic_add(y_at, acc, mask=y_ok)
    else:
        tl.store(y_at, acc, mask=y_ok)


@triton.jit
def kernel_words(x_ptr, q_ptr, s_ptr, z_ptr, t_ptr, sc_ptr, ss_ptr, so_ptr, y_ptr, n, k_words, words_per_split,
                 stride_w, stride_s, GROUP: tl.constexpr, GROUPS: tl.constexpr, BLOCK_N: tl.constexpr,
                 NF4: tl.constexpr, NESTED: tl.constexpr, SCALE_BLOCK: tl.constexpr, ATOMIC: tl.constexpr,
                 LANES: tl.constexpr):
    """One activation row: the packed weights read as 32-bit words of eight nibbles (word ``j`` of a row holds
    inputs ``8j`` to ``8j + 7``, lowest nibble first; with ``LANES``, the group's inputs ``i * WORDS + j`` for
    its nibbles ``i``, so that each nibble position's activations are one contiguous load), every product
    accumulated in a ``[BLOCK_N, words]`` tile and reduced across threads once, after the loop. Offsets count
    32-bit words (``stride_w``, ``k_words``), so that Triton can prove 16-byte alignment and load four words at
    once. An int4 nibble becomes a float with two bit operations and one addition (``0x4B000000 | q`` is the
    float ``2**23 + q``); the group's scale multiplies a word's eight products at once, and its zero multiplies
    the sum of their inputs."""
    WORDS: tl.constexpr = GROUP // 8
    out = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    out_ok = out < n
    word = tl.arange(0, WORDS)
    q32 = q_ptr.to(tl.pointer_type(tl.int32))
    acc = tl.zeros((BLOCK_N, WORDS), dtype=tl.float32)
    start = tl.program_id(1) * words_per_split
    end = tl.minimum(start + words_per_split, k_words)
    for w0 in range(start, end, GROUPS * WORDS):
        for step in tl.static_range(GROUPS):
            wg = w0 + step * WORDS  # the group's first word
            in_ok = wg + word < end  # the group is inside the split (groups never straddle its end)
            ok = out_ok & (tl.zeros_like(out) + wg < end)
            words = tl.load(q32 + out[:, None] * stride_w + (wg + word)[None, :],
                            mask=out_ok[:, None] & in_ok[None, :], other=0)
            g = wg // WORDS
            if NESTED:
                code = tl.load(s_ptr + out * stride_s + g, mask=ok, other=0)
                block = (out * (k_words // WORDS) + g) // SCALE_BLOCK
                scale = (tl.load(sc_ptr + code.to(tl.int32)) * tl.load(ss_ptr + block, mask=ok, other=0.0)
                         + tl.load(so_ptr + block, mask=ok, other=0.0))
            else:
                scale = tl.load(s_ptr + out * stride_s + g, mask=ok, other=0.0).to(tl.float32)
            part = tl.zeros((BLOCK_N, WORDS), dtype=tl.float32)
            x_sum = tl.zeros((WORDS,), dtype=tl.float32)
            for i in tl.static_range(8):
                nibble = (words >> (4 * i)) & 0xF
                if NF4:
                    w = tl.load(t_ptr + nibble)
                else:
                    w = (nibble | 0x4B000000).to(tl.float32, bitcast=True) - 8388616.0  # q - 8
                at = wg * 8 + i * WORDS + word if LANES else wg * 8 + 8 * word + i
                xi = tl.load(x_ptr + at, mask=in_ok, other=0.0).to(tl.float32)
                part += w * xi[None, :]
                x_sum += xi
            acc += part * scale[:, None]
            if not NF4:
                zero = tl.load(z_ptr + out * stride_s + g, mask=ok, other=0.0).to(tl.float32)
                acc += zero[:, None] * x_sum[None, :]
    y = tl.sum(acc, axis=1)
    if ATOMIC:
        tl.atomic_add(y_ptr + out, y, mask=out_ok)
    else:
        tl.store(y_ptr + out, y, mask=out_ok)
