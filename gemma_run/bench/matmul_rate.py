"""The bf16 matrix-multiply rate of the device, measured: the denominator of task=bench_train's ``mfu_6n``.

One square product of ``size`` x ``size`` bf16 matrices (fp32 accumulation, as a training step's matmuls), timed
REPEATS times as the copy bandwidth is (``bandwidth.fastest``). A product does 2 x size^3 FLOPs.
Measured on the clean device before the model loads, in the same run as the training it is compared with, so
that a card's clocks and power limit count on both sides (datasheet peaks are in gemma_run/training/flops.py).
"""

from __future__ import annotations

from typing import Any

from gemma_run.bench import bandwidth

REPEATS = 10
SIZE = 8192  # large enough for the tensor cores' full rate on an H100/H200 (~1.4 ms a product)


def measure(device: Any, size: int = SIZE, dtype: str = "bfloat16") -> dict[str, Any]:
    """{"device", "size", "dtype", "seconds", "tflops"} of the fastest of REPEATS ``size``-square products."""
    import torch

    device = torch.device(device)
    a = torch.randn(size, size, device=device).to(getattr(torch, dtype))
    b = torch.randn(size, size, device=device).to(a.dtype)
    out = a @ b  # first call: the library picks its kernel
    seconds = bandwidth.fastest(lambda a=a, b=b, out=out: torch.matmul(a, b, out=out), device, REPEATS)
    del a, b, out
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return {"device": str(device), "size": size, "dtype": dtype, "seconds": seconds,
            "tflops": 2 * size**3 / seconds / 1e12}
