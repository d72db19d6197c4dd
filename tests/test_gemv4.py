"""The 4-bit matrix-vector kernel (gemma_run.kernels.gemv4): the packed formats against their definition and
bitsandbytes' NF4, the Triton kernel against the reference path (dequantize, then one matmul) in Triton's CPU
interpreter (where Triton is installed) and on a CUDA GPU at gemma3_27b's layer shapes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
from helpers.run_if import RunIf

from gemma_run.kernels import gemv4


def _weight(out: int, inp: int, seed: int = 0):
    import torch

    torch.manual_seed(seed)
    return torch.randn(out, inp) * 0.02


def test_int4_round_trip_is_within_half_a_step() -> None:
    import torch

    w = _weight(64, 512)
    p = gemv4.pack_int4(w, 128, torch.float32)
    assert (p.out_features, p.in_features, tuple(p.qweight.shape), tuple(p.scale.shape)) == (64, 512, (64, 256),
                                                                                             (64, 4))
    assert p.nbytes() == 64 * 256 + 2 * 64 * 4 * 4
    step = p.scale.repeat_interleave(128, dim=1)
    assert ((gemv4.dequantize(p) - w).abs() <= step / 2 + 1e-7).all()
    groups = w.view(64, 4, 128)  # each group's extremes are levels 0 and 15
    dq = gemv4.dequantize(p).view(64, 4, 128)
    assert torch.allclose(dq.amin(-1), groups.amin(-1), atol=1e-6)
    assert torch.allclose(dq.amax(-1), groups.amax(-1), atol=1e-6)


def test_nf4_values_are_the_table_times_each_blocks_absmax() -> None:
    import torch

    w = _weight(32, 256)
    p = gemv4.pack_nf4(w, 64)
    dq = gemv4.dequantize(p).view(32, 4, 64)
    absmax = w.view(32, 4, 64).abs().amax(-1, keepdim=True)
    table = torch.tensor(gemv4.NF4)
    # every value is a table entry times its block's absmax, and the nearest such entry to the weight
    nearest = (w.view(32, 4, 64, 1) / absmax.unsqueeze(-1) - table).abs().argmin(-1)
    assert torch.equal(dq, table[nearest] * absmax)


@RunIf(bnb=True)
@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
def test_nf4_is_what_bitsandbytes_stores_for_quant_4bit(dtype: str) -> None:
    """The same values as bitsandbytes' NF4 (blocksize 64, without double quantization)."""
    import bitsandbytes.functional as bnb
    import torch

    w = _weight(256, 1024).to(getattr(torch, dtype))
    q, state = bnb.quantize_4bit(w, blocksize=64, quant_type="nf4", compress_statistics=False)
    assert torch.equal(bnb.get_4bit_type("nf4", device="cpu").float(), torch.tensor(gemv4.NF4))
    assert torch.equal(gemv4.dequantize(gemv4.pack_nf4(w, 64)).to(w.dtype), bnb.dequantize_4bit(q, state))


def test_on_cpu_gemv_is_the_reference_and_the_kernel_refuses_a_prefill() -> None:
    import torch

    p = gemv4.pack_int4(_weight(48, 256), 128)
    x = torch.randn(2, 5, 256)
    assert torch.equal(gemv4.gemv(x, p), gemv4.reference_matmul(x, p))
    assert gemv4.gemv(x, p).shape == (2, 5, 48)
    with pytest.raises(ValueError, match="at most 8 rows"):
        gemv4.gemv(torch.randn(9, 256), p, use_kernel=True)
    with pytest.raises(ValueError, match="not a multiple of the group size 128"):
        gemv4.pack_int4(_weight(4, 192), 128)


def test_launch_shape_splits_the_inputs_only_when_rows_are_few() -> None:
    assert gemv4.launch_shape(21504, 5376, 128, 32) == (672, 1, 5376)  # gate: rows enough
    blocks, splits, per_split = gemv4.launch_shape(2048, 5376, 128, 32)  # k: 64 row blocks, split in 5
    assert (blocks, splits) == (64, 5) and per_split % 128 == 0 and splits * per_split >= 5376
    assert gemv4.launch_shape(96, 384, 128, 32, split_k=2) == (3, 2, 256)
    # four groups a step: a split is a whole number of steps (down: 42 steps of 512 inputs, two splits of 21)
    assert gemv4.launch_shape(5376, 21504, 128, 32, groups=4) == (168, 2, 10752)


INTERPRETED = textwrap.dedent("""
    import json, sys, torch
    from gemma_run.kernels import gemv4
    from gemma_run.kernels.gemv4 import KernelConfig
    torch.manual_seed(0)
    worst = {}
    configs = [KernelConfig(split_k=s) for s in (None, 1, 2, 3)] + [
        KernelConfig(groups=2, split_k=2), KernelConfig(groups=4, block_n=64), KernelConfig(block_n=16, dot=True),
        KernelConfig(groups=2, dot=True, split_k=2), KernelConfig(words=True), KernelConfig(words=True, split_k=3),
        KernelConfig(words=True, groups=4, block_n=64), KernelConfig(words=True, groups=2, split_k=2)]
    def nested(w):  # NF4 with its absmax quantized as bitsandbytes' double quant stores it (blocks of 4 codes)
        p = gemv4.pack_nf4(w, 64)
        code = torch.linspace(-1, 1, 256)
        flat = p.scale.flatten()
        scale = flat.view(-1, 4).abs().amax(-1) / 0.5
        offset = torch.full_like(scale, 0.5 * scale.mean().item())
        per = (flat - offset.repeat_interleave(4)) / scale.repeat_interleave(4)
        codes = (per[:, None] - code).abs().argmin(-1).to(torch.uint8).view(p.scale.shape)
        return gemv4.Packed4("nf4", p.qweight, codes, None, 64, code, scale, offset, 4)
    for kind in ("int4", "nf4", "nf4 nested"):
        for dtype in (torch.float32, torch.bfloat16):
            w = torch.randn(96, 384) * 0.02
            p = (gemv4.pack_int4(w.to(dtype), 128) if kind == "int4" else gemv4.pack_nf4(w, 64) if kind == "nf4"
                 else nested(w))
            for rows in (1, 3, 8):
                x = torch.randn(rows, 384).to(dtype)
                ref = gemv4.reference_matmul(x, p).float()
                lanes = gemv4.to_lanes(p)
                assert torch.equal(gemv4.dequantize(lanes), gemv4.dequantize(p))
                if rows > 1:  # lane order is the word-wise kernel's: several rows are refused, not miscomputed
                    try:
                        gemv4.gemv(x, lanes, use_kernel=True)
                        raise SystemExit("lane-order weights went through the byte-wise kernel")
                    except ValueError:
                        pass
                runs = [(p, c) for c in configs] + [(lanes, c) for c in configs if c.words] if rows == 1 else \
                    [(p, c) for c in configs]
                for packed, config in runs:
                    if config.dot and dtype == torch.bfloat16:
                        continue  # Triton's interpreter gets bf16 tl.dot wrong (even a plain one); the GPU test has it
                    out = gemv4.gemv(x, packed, use_kernel=True, config=config).float()
                    assert out.shape == ref.shape
                    err = ((out - ref).abs().max() / ref.abs().max()).item()
                    key = f"{kind} {str(dtype).removeprefix('torch.')}"
                    worst[key] = max(worst.get(key, 0.0), err)
    print(json.dumps(worst))
""")


@RunIf(triton=True)
def test_kernel_equals_the_reference_in_tritons_interpreter() -> None:
    """Every activation row count the kernel takes, with and without splitting the inputs (rows that do not
    fill a block, a split that ends mid-way, a step of several groups that passes the end of its split), as a
    sum of products and on the tensor-core path: the reference's products up to the order of the fp32 sums (and
    the rounding of a bf16 output)."""
    proc = subprocess.run([sys.executable, "-c", INTERPRETED], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "TRITON_INTERPRET": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    worst = json.loads(proc.stdout.strip().splitlines()[-1])
    assert max(worst[f"{kind} float32"] for kind in ("int4", "nf4", "nf4 nested")) < 1e-5, worst
    assert max(worst[f"{kind} bfloat16"] for kind in ("int4", "nf4", "nf4 nested")) < 1e-2, worst


@RunIf(gpus=1, triton=True)
@pytest.mark.parametrize("kind", ["int4", "nf4"])
@pytest.mark.parametrize("rows", [1, 8])
def test_kernel_equals_the_reference_at_gemma3_27b_shapes_on_a_gpu(kind: str, rows: int) -> None:
    import torch

    torch.manual_seed(0)
    for out, inp in ((21504, 5376), (5376, 21504), (2048, 5376)):  # gate/up, down, k/v
        w = (torch.randn(out, inp, device="cuda") * 0.02).to(torch.bfloat16)
        p = gemv4.pack_int4(w, 128) if kind == "int4" else gemv4.pack_nf4(w, 64)
        x = torch.randn(rows, inp, device="cuda", dtype=torch.bfloat16)
        ref = gemv4.reference_matmul(x, p).float()
        for config in (gemv4.DEFAULT_CONFIG, gemv4.KernelConfig(groups=4, block_n=64),
                       gemv4.KernelConfig(block_n=64, dot=True, groups=2), gemv4.KernelConfig(words=True),
                       gemv4.KernelConfig(words=True, block_n=128, groups=4, split_k=2)):
            out_ = gemv4.gemv(x, p, config=config).float()
            assert ((out_ - ref).abs().max() / ref.abs().max()).item() < 1e-2, (out, inp, config)
        if rows == 1:  # lane order: the word-wise kernel only
            lanes = gemv4.to_lanes(p)
            for config in (gemv4.KernelConfig(words=True), gemv4.KernelConfig(words=True, block_n=64, groups=2)):
                out_ = gemv4.gemv(x, lanes, config=config).float()
                assert ((out_ - ref).abs().max() / ref.abs().max()).item() < 1e-2, (out, inp, config, "lanes")


@RunIf(gpus=1, triton=True, bnb=True)
@pytest.mark.parametrize("rows", [1, 8])
def test_kernel_on_bitsandbytes_own_nf4_bytes_on_a_gpu(rows: int) -> None:
    """quant=4bit's weights as bitsandbytes quantizes them on the GPU (double quant: absmax as 8-bit codes), taken
    as stored and stacked as the engine stacks q/k/v: exactly bitsandbytes' values, and the kernel's products
    equal the reference's."""
    import bitsandbytes.functional as bnb
    import torch

    torch.manual_seed(0)
    packs = []
    for out in (4096, 2048, 2048):  # gemma3_27b's q, k, v
        w = (torch.randn(out, 5376, device="cuda") * 0.02).to(torch.bfloat16)
        q, state = bnb.quantize_4bit(w, blocksize=64, quant_type="nf4", compress_statistics=True)
        param = type("Weight", (), {"data": q, "quant_state": state})()
        p = gemv4.from_bitsandbytes(param)
        assert p.nested and torch.equal(gemv4.dequantize(p).to(torch.bfloat16), bnb.dequantize_4bit(q, state))
        packs.append(p)
    stacked = gemv4.stack(packs)
    x = torch.randn(rows, 5376, device="cuda", dtype=torch.bfloat16)
    ref = gemv4.reference_matmul(x, stacked).float()
    for config in (gemv4.DEFAULT_CONFIG, gemv4.KernelConfig(words=True)):
        out = gemv4.gemv(x, stacked, config=config).float()
        assert ((out - ref).abs().max() / ref.abs().max()).item() < 1e-2, config


@RunIf(bnb=True)
@pytest.mark.parametrize("nested", [False, True])
def test_a_prompts_product_is_bitsandbytes_own(nested: bool) -> None:
    """Many rows (a prompt's pass) go through the weight dequantized to the activations' dtype, as bitsandbytes
    multiplies them: the same product in one chunk, and up to the matmul's rounding in chunks of rows."""
    import bitsandbytes.functional as bnb
    import torch

    w = _weight(96, 256).to(torch.bfloat16)
    q, state = bnb.quantize_4bit(w, blocksize=64, quant_type="nf4", compress_statistics=nested)
    p = gemv4.from_bitsandbytes(type("Weight", (), {"data": q, "quant_state": state})())
    x = torch.randn(12, 256, dtype=torch.bfloat16)
    want = torch.nn.functional.linear(x, bnb.dequantize_4bit(q, state))
    assert torch.equal(gemv4.linear(x, p), want)
    assert torch.allclose(gemv4.linear(x, p, chunk=32).float(), want.float(), rtol=1e-2, atol=1e-3)
