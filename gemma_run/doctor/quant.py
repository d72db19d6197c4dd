"""bitsandbytes usable here: a real 4-bit (nf4) matmul checked against references."""

from __future__ import annotations

from typing import Any

from gemma_run.doctor.base import DoctorContext, Finding, gpu_count

# Two bounds, far apart on purpose: nf4 stores 16 levels a value (block size 64), so the dequantized weight is
# coarse against the full-precision one (MAX_QUANT_ERROR leaves room for that), while the kernel against its own
# dequantized weight differs only by the compute dtype's rounding (MAX_KERNEL_ERROR: a broken kernel is far off).
MAX_KERNEL_ERROR = 0.02
MAX_QUANT_ERROR = 0.15


def _rel(a: Any, b: Any) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm())


def matmul_4bit_errors(device: str, dtype_name: str, seed: int = 0) -> dict[str, Any]:
    """Quantize a random weight to nf4 on ``device`` and multiply with bitsandbytes' kernel; 1 row (the
    inference gemv path) and 8 rows (dequantize + gemm). Relative errors against fp32 references."""
    import bitsandbytes as bnb
    import bitsandbytes.functional as F
    import torch

    dtype = getattr(torch, dtype_name)
    g = torch.Generator().manual_seed(seed)
    # Output 128: a multiple of 32, as the CPU 4-bit kernels of bitsandbytes need (gemma_run.quant.bitsandbytes.
    # check_cpu_4bit refuses other sizes on such CPUs).
    weight = torch.randn(128, 256, generator=g).to(device=device, dtype=dtype)
    packed, state = F.quantize_4bit(weight, quant_type="nf4", blocksize=64)
    dequant = F.dequantize_4bit(packed, state).float()
    out: dict[str, Any] = {"device": device, "dtype": dtype_name, "shape": [128, 256], "quant_type": "nf4",
                           "weight_error": round(_rel(dequant, weight), 4)}
    kernel, quant = 0.0, 0.0
    for rows in (1, 8):
        x = torch.randn(rows, 256, generator=g).to(device=device, dtype=dtype)
        y = bnb.matmul_4bit(x, packed.t(), quant_state=state)
        if not bool(torch.isfinite(y).all()):
            raise FloatingPointError(f"bitsandbytes 4-bit matmul gave non-finite values ({rows} row(s))")
        kernel = max(kernel, _rel(y, x.float() @ dequant.t()))
        quant = max(quant, _rel(y, x.float() @ weight.float().t()))
    out.update(kernel_error=round(kernel, 5), error_vs_full_precision=round(quant, 4))
    return out


def bnb_check(ctx: DoctorContext) -> Finding:
    from gemma_run.doctor.versions import installed

    version = installed("bitsandbytes")
    if version is None:
        return Finding("warn", "bitsandbytes is not installed: quant=8bit|4bit|fp4 cannot run",
                       fix="pip install 'gemma-run[quant]' (bitsandbytes>=0.45 has CPU and CUDA builds on PyPI)")
    try:
        import bitsandbytes  # noqa: F401
    except Exception as e:  # ImportError, or its own RuntimeError when no backend library fits
        return Finding("fail", f"bitsandbytes {version} is installed but does not import: {type(e).__name__}: "
                       f"{str(e).splitlines()[0] if str(e) else ''}",
                       fix="pip install --force-reinstall 'bitsandbytes>=0.45' matching your torch/CUDA, "
                           "or run with quant=none")
    device = "cuda:0" if gpu_count() else "cpu"
    dtype = "bfloat16" if device != "cpu" else "float32"
    try:
        r = matmul_4bit_errors(device, dtype)
    except Exception as e:  # a missing kernel for this device/CPU shows up here, not at import
        return Finding("fail", f"bitsandbytes {version} 4-bit matmul on {device} failed: {type(e).__name__}: "
                       f"{str(e).splitlines()[0] if str(e) else ''}",
                       fix="pip install -U bitsandbytes (its build must match this device), or quant=none")
    r["bitsandbytes"] = version
    text = (f"bitsandbytes {version} nf4 matmul on {device} ({dtype}): kernel error {r['kernel_error']:.2e}, "
            f"vs full precision {r['error_vs_full_precision']:.3f}")
    if r["kernel_error"] > MAX_KERNEL_ERROR or r["error_vs_full_precision"] > MAX_QUANT_ERROR:
        return Finding("fail", f"{text} (limits {MAX_KERNEL_ERROR}, {MAX_QUANT_ERROR})",
                       fix="the 4-bit kernel is wrong on this device: pip install -U bitsandbytes, or quant=none",
                       details=r)
    return Finding("pass", text, details=r)


def int4_errors(device: str, seed: int = 0) -> dict[str, Any]:
    """quant=int4's own layout for ``device`` on a random 256 -> 256 Linear (bf16, group 128): the weight read
    back through the kernel against the bf16 weight (16 levels a group: coarse, within MAX_QUANT_ERROR)."""
    import torch
    from omegaconf import OmegaConf
    from torchao.quantization import quantize_

    from gemma_run.quant.torchao import ao_config

    g = torch.Generator().manual_seed(seed)
    lin = torch.nn.Linear(256, 256, bias=False, dtype=torch.bfloat16)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(256, 256, generator=g).to(torch.bfloat16))
    lin = lin.to(device)
    weight = lin.weight.detach().float().clone()
    q = OmegaConf.create({"group_size": 128, "packing_format": "auto", "qparams_algorithm": "tinygemm"})
    quantize_(lin, ao_config(q, device.startswith("cuda")))
    with torch.no_grad():
        read = lin(torch.eye(256, device=device, dtype=torch.bfloat16)).float().t()
    if not bool(torch.isfinite(read).all()):
        raise FloatingPointError("torchao int4 matmul gave non-finite values")
    return {"device": device, "layout": type(lin.weight).__name__, "weight_error": round(_rel(read, weight), 4)}


def int4_check(ctx: DoctorContext) -> Finding:
    from gemma_run.doctor.versions import installed

    version = installed("torchao")
    if version is None:
        return Finding("warn", "torchao is not installed: quant=int4 cannot run",
                       fix="pip install torchao==0.18.0 (or 'gemma-run[fast]')")
    device = "cuda:0" if gpu_count() else "cpu"
    try:
        r = int4_errors(device)
    except Exception as e:  # an import mismatch with torch, or a missing kernel for this device
        return Finding("fail", f"torchao {version} int4 on {device} failed: {type(e).__name__}: "
                       f"{str(e).splitlines()[0] if str(e) else ''}",
                       fix="pip install torchao==0.18.0 (it pairs with torch 2.11+), or use quant=4bit")
    r["torchao"] = version
    text = f"torchao {version} int4 ({r['layout']}) on {device}: weight error {r['weight_error']:.3f}"
    if r["weight_error"] > MAX_QUANT_ERROR:
        return Finding("fail", f"{text} (limit {MAX_QUANT_ERROR})", details=r,
                       fix="the int4 kernel is wrong on this device: pip install torchao==0.18.0, or quant=4bit")
    return Finding("pass", text, details=r)


CHECKS = [("quant.bitsandbytes", bnb_check, "bitsandbytes imports and a real nf4 matmul matches its reference"),
          ("quant.torchao", int4_check, "torchao imports and quant=int4's kernel reads its weights back")]
