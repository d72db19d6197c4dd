"""The GPUs' clocks, power and throttling when a bench ran, read from nvidia-smi.

Why: the same decode configuration can run at different speeds on two cards of one kind with the same copy
bandwidth. tinygemm's batch-1 kernels compute a 16-row tile for one row, so the SM clock may count, and a card held
below its boost clock (power cap, temperature, an application clock) reads its weights slower than its memory
allows. ``task=bench`` records this next to its figures, so rows from different machines can be told apart.
"""

from __future__ import annotations

import shutil
import subprocess
from typing import Any

FIELDS = ("index", "name", "clocks.sm", "clocks.max.sm", "clocks.mem", "clocks.max.mem", "power.draw",
          "power.limit", "temperature.gpu", "clocks_throttle_reasons.active")
TIMEOUT = 10  # seconds nvidia-smi may take


def query() -> list[dict[str, str]] | None:
    """One dict per GPU (FIELDS -> nvidia-smi's value, units dropped), or None where nvidia-smi is missing or
    fails (no NVIDIA driver: a CPU run)."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return None
    try:
        proc = subprocess.run([smi, f"--query-gpu={','.join(FIELDS)}", "--format=csv,noheader,nounits"],
                              capture_output=True, text=True, timeout=TIMEOUT, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if proc.returncode != 0:
        return None
    return [dict(zip(FIELDS, (v.strip() for v in line.split(",")), strict=False))
            for line in proc.stdout.splitlines() if line.strip()]


def describe(state: list[dict[str, Any]] | None) -> str:
    """A short line for the log: each GPU's SM and memory clocks against their maximum, power against its
    limit."""
    if not state:
        return "no nvidia-smi"
    return "; ".join(f"GPU {g.get('index')}: SM {g.get('clocks.sm')}/{g.get('clocks.max.sm')} MHz, "
                     f"memory {g.get('clocks.mem')}/{g.get('clocks.max.mem')} MHz, "
                     f"{g.get('power.draw')}/{g.get('power.limit')} W, {g.get('temperature.gpu')} C, "
                     f"throttle {g.get('clocks_throttle_reasons.active')}" for g in state)
