"""Where a test's runs land and what they leave there: the repository root, run dirs, losses, a LoRA adapter."""

from __future__ import annotations

import json
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

# overrides that keep a training run small: log every step, short sequences
FAST = ["train.logging_steps=1", "train.max_seq_length=128"]


def run_dirs(root: Path) -> list[Path]:
    """The run dirs under root/outputs (DATE/TIME), oldest first."""
    return sorted(p for p in (root / "outputs").glob("*/*") if p.is_dir())


def losses(run_dir: Path) -> dict[int, float]:
    """The training loss per step, from the run dir's losses.jsonl."""
    rows = [json.loads(line) for line in (run_dir / "losses.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows if "loss" in r}


def lora_b_norm(adapter: Path) -> float:
    """LoRA's B matrices start at zero: a norm above zero means the adapter was trained and saved whole."""
    from safetensors.torch import load_file

    tensors = load_file(adapter / "adapter_model.safetensors")
    assert any("lora_A" in k for k in tensors) and any("lora_B" in k for k in tensors)
    return float(sum(t.float().norm() for k, t in tensors.items() if "lora_B" in k))


def train_api(compose_cfg, run_dir: Path, *overrides: str) -> dict:
    """task=train in this process (FAST plus ``overrides``) into run_dir; returns run()'s result."""
    from gemma_run import run

    return run(compose_cfg(["task=train", *FAST, *overrides]), run_dir)
