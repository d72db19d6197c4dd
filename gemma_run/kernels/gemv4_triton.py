"""The Triton kernel behind :func:`gemma_run.kernels.gemv4.gemv` (imported only when it runs: Triton is optional).

One program computes ``BLOCK_N`` outputs of every activation row over ``K_PER_SPLIT`` inputs, a group at a time:
it loads the group's packed bytes ``[BLOCK_N, GROUP / 2]`` once, splits each byte into its two nibbles, turns them
into weights with the row's scale (and zero, or the NF4 table) in registers, and multiplies them with the even
and odd inputs of each activation row. Partial sums go to an fp32 output, added atomically when the input
dimension is split over several programs.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def kernel(x_ptr, q_ptr, s_ptr, z_ptr, t_ptr, y_ptr, rows, n, k, stride_x, stride_q, stride_s, stride_y,
           GROUP: tl.constexpr, BLOCK_N: tl.constexpr, ROWS: tl.constexpr, K_PER_SPLIT: tl.constexpr,
           NF4: tl.constexpr, ATOMIC: tl.constexpr):
    HALF: tl.constexpr = GROUP // 2
    out = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    out_ok = out < n
    byte = tl.arange(0, HALF)
    row = tl.arange(0, ROWS)
    row_ok = row < rows
    acc = tl.zeros((ROWS, BLOCK_N), dtype=tl.float32)
    start = tl.program_id(1) * K_PER_SPLIT
    for k0 in range(start, tl.minimum(start + K_PER_SPLIT, k), GROUP):
        packed = tl.load(q_ptr + out[:, None] * stride_q + (k0 // 2 + byte)[None, :],
                         mask=out_ok[:, None], other=0)
        low = packed & 0xF
        high = (packed >> 4) & 0xF
        scale = tl.load(s_ptr + out * stride_s + k0 // GROUP, mask=out_ok, other=0.0).to(tl.float32)
        if NF4:
            w_low = tl.load(t_ptr + low) * scale[:, None]
            w_high = tl.load(t_ptr + high) * scale[:, None]
        else:
            zero = tl.load(z_ptr + out * stride_s + k0 // GROUP, mask=out_ok, other=0.0).to(tl.float32)
            w_low = (low.to(tl.float32) - 8.0) * scale[:, None] + zero[:, None]
            w_high = (high.to(tl.float32) - 8.0) * scale[:, None] + zero[:, None]
        x_at = x_ptr + row[:, None] * stride_x + (k0 + 2 * byte)[None, :]
        x_ok = row_ok[:, None]
        x_even = tl.load(x_at, mask=x_ok, other=0.0).to(tl.float32)
        x_odd = tl.load(x_at + 1, mask=x_ok, other=0.0).to(tl.float32)
        acc += tl.sum(x_even[:, None, :] * w_low[None, :, :] + x_odd[:, None, :] * w_high[None, :, :], axis=2)
    y_at = y_ptr + row[:, None] * stride_y + out[None, :]
    y_ok = row_ok[:, None] & out_ok[None, :]
    if ATOMIC:
        tl.atomic_add(y_at, acc, mask=y_ok)
    else:
        tl.store(y_at, acc, mask=y_ok)
