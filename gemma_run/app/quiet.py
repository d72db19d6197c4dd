"""Import-time noise of optional libraries, kept out of every run's console (idempotent; logging levels only).

When torchao is installed, transformers imports it while loading any model, and torchao 0.18 then logs on every
run, whatever the quant mode: "Failed to load .../_C_mxfp8...so" and "..._C_cutlass_90a...so" (optional MX/CUTLASS
extensions built for another torch; quant=int4 uses torch's own int4 kernels), "Detected no triton" on CPU
machines, and torch >= 2.13's deprecation of its enum registration with pytree (twice). None is actionable by a
user; `gemma-run task=test` checks what int4 really needs (the `quant.torchao` check).

``stdout_to_stderr`` keeps libraries' console output (the Trainer's loss dicts, DeepSpeed's log) off stdout.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterator

QUIET = ("torchao", "torchao.kernel.intmm", "torch.utils._pytree")


def quiet_optional_imports() -> None:
    for name in QUIET:
        logging.getLogger(name).setLevel(logging.ERROR)


@contextlib.contextmanager
def stdout_to_stderr() -> Iterator[None]:
    """Library console output goes to stderr inside this block, so stdout carries only what a task prints for
    the user (completions, tables): the HF Trainer prints its loss dicts (print, tqdm.write), and DeepSpeed logs
    through its own handler on stdout ("Setting accelerator to CPU" when it is first imported)."""
    deepspeed = logging.getLogger("DeepSpeed")  # deepspeed.utils.logging's logger (propagate=False)
    for handler in deepspeed.handlers:  # imported before this block: its handler holds the real stdout
        if isinstance(handler, logging.StreamHandler) and handler.stream in (sys.stdout, sys.__stdout__):
            handler.setStream(sys.stderr)
    with contextlib.redirect_stdout(sys.stderr):  # imported inside: its handler takes sys.stdout, now stderr
        yield
