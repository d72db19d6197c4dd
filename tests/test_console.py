"""stdout carries only what a task prints for the user: library console output goes to stderr, and a sweep's
missing plot is one line saying how to get it."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from helpers.run_if import RunIf

NEEDS_DEEPSPEED = RunIf(deepspeed=True)
TRAIN = ["task=train", "train.max_steps=2", "train.logging_steps=1", "train.max_seq_length=128"]


@pytest.fixture
def alpaca(tmp_path: Path) -> Path:
    path = tmp_path / "train.jsonl"
    rows = [{"instruction": f"Say {w}", "output": f"{w} there"} for w in ("hi", "bye", "yes", "no")]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.mark.slow
@pytest.mark.parametrize("how", [
    "deepspeed=none",
    pytest.param("deepspeed=zero2", marks=NEEDS_DEEPSPEED),
    pytest.param("deepspeed=zero2 launcher=deepspeed", marks=NEEDS_DEEPSPEED),  # a launched rank's stdout too
])
def test_training_prints_nothing_on_stdout(cli, alpaca: Path, how: str) -> None:
    """The Trainer's loss dicts and DeepSpeed's "Setting accelerator to CPU" log go to stderr."""
    proc = cli(*TRAIN, f"data.train_file={alpaca}", *how.split(), timeout=400)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout == ""
    assert "{'loss': " in proc.stderr  # still shown, on stderr


@pytest.mark.slow
def test_sweep_without_matplotlib_says_how_to_get_the_plot(cli, tmp_path: Path) -> None:
    hidden = tmp_path / "no-matplotlib" / "matplotlib"
    hidden.mkdir(parents=True)
    (hidden / "__init__.py").write_text("raise ImportError('No module named matplotlib')\n")
    path = os.pathsep.join([str(hidden.parent), os.environ.get("PYTHONPATH", "")])
    proc = cli("-m", "task=plan", "quant=none,8bit", env={"PYTHONPATH": path})
    assert proc.returncode == 0, proc.stderr[-3000:]
    [sweep] = [p for p in (tmp_path / "multirun").glob("*/*") if p.is_dir()]
    assert (sweep / "summary.md").is_file() and not (sweep / "summary.png").exists()
    assert "# Sweep summary: 2 jobs, 2 ok, 0 failed" in proc.stdout
    lines = [line for line in proc.stderr.splitlines() if "matplotlib" in line]
    assert len(lines) == 1 and "pip install 'gemma-run[sweep]'" in lines[0], proc.stderr[-2000:]
    assert "Callback" not in proc.stderr
