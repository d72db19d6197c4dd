"""result.json's train_loss after a resume is the whole run's mean loss, as an uninterrupted run reports it, also
when the checkpoint falls between two logging steps."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import pytest

WORDS = "the quick brown fox jumps over the lazy dog a model runs on the GPUs you have".split()


@pytest.fixture
def alpaca(tmp_path: Path) -> Path:
    rnd = random.Random(0)
    rows = [{"instruction": f"Count to {i % 5 + 1}", "output": " ".join(rnd.choices(WORDS, k=6))} for i in range(16)]
    path = tmp_path / "alpaca.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def train(compose_cfg, run_dir: Path, *overrides: str) -> dict:
    from gemma_run import run

    run(compose_cfg(["task=train", "train.max_seq_length=128", *overrides]), run_dir)
    return json.loads((run_dir / "result.json").read_text())


@pytest.mark.slow
@pytest.mark.parametrize("logging_steps", [1, 3])  # 3: the checkpoint (step 4) is not a logging step
def test_train_loss_after_resume_is_the_whole_runs(compose_cfg, alpaca: Path, tmp_path: Path, logging_steps: int):
    args = [f"data.train_file={alpaca}", "train.max_steps=6", "train.save_steps=2", "train.save_total_limit=3",
            f"train.logging_steps={logging_steps}"]
    whole = train(compose_cfg, tmp_path / "whole", *args)

    cut = tmp_path / "cut"
    train(compose_cfg, cut, *args)
    shutil.rmtree(cut / "checkpoint-6")  # as if killed after the save at step 4
    # save_total_limit=1: the resumed run's save at step 6 rotates out the checkpoint it started from
    resumed = train(compose_cfg, cut, *args, "train.save_total_limit=1", f"resume={cut}")

    assert Path(resumed["resumed_from"]).name == "checkpoint-4" and resumed["global_step"] == 6
    assert resumed["train_loss"] == pytest.approx(whole["train_loss"], abs=1e-6)
