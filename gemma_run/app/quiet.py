"""Libraries' console output (the Trainer's loss dicts, DeepSpeed's log) kept off stdout, for one block.

Import-time log noise of optional libraries is the patch ``logging.quiet_optional_imports`` (gemma_run.patches).
"""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterator


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
