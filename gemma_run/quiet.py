"""Import-time noise of optional libraries, kept out of every run's console (idempotent; logging levels only).

When torchao is installed, transformers imports it while loading any model, and torchao 0.18 then logs on every
run, whatever the quant mode: "Failed to load .../_C_mxfp8...so" and "..._C_cutlass_90a...so" (optional MX/CUTLASS
extensions built for another torch; quant=int4 uses torch's own int4 kernels), "Detected no triton" on CPU
machines, and torch >= 2.13's deprecation of its enum registration with pytree (twice). None is actionable by a
user; `gemma-run task=test` checks what int4 really needs (the `quant.torchao` check).
"""

from __future__ import annotations

import logging

QUIET = ("torchao", "torchao.kernel.intmm", "torch.utils._pytree")


def quiet_optional_imports() -> None:
    for name in QUIET:
        logging.getLogger(name).setLevel(logging.ERROR)
