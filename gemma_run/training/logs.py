"""The loss log (losses.jsonl, one line per logging step, rank 0) and the loss-curve PNG drawn from it."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

LOSSES = "losses.jsonl"
CURVE = "loss_curve.png"


def read(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def cut(path: Path, step: int) -> None:
    """On resume: drop the lines logged after the checkpoint we continue from (they are logged again)."""
    kept = [r for r in read(path) if r["step"] <= step]
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in kept))
    os.replace(tmp, path)


def loss_callback(path: Path) -> Any:
    """A TrainerCallback appending every logged train/eval loss to ``path`` (world process zero only)."""
    from transformers import TrainerCallback

    class LossLog(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            if not state.is_world_process_zero or not logs:
                return control
            row = {"step": state.global_step, "epoch": state.epoch}
            for key in ("loss", "eval_loss", "learning_rate", "grad_norm"):
                if key in logs:
                    row[key] = logs[key]
            if "loss" in row or "eval_loss" in row:
                with path.open("a") as f:
                    f.write(json.dumps(row) + "\n")
            return control

    return LossLog()


def schedule_callback(cfg: Any, warnings: list[str]) -> Any:
    """A TrainerCallback that warns, once the Trainer knows the number of optimizer steps, about train keys
    larger than the run: warmup that never ends, a logging interval never reached. Appends to ``warnings``."""
    from transformers import TrainerCallback

    log = logging.getLogger("gemma_run.training")
    t = cfg.train

    class ScheduleCheck(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            steps = state.max_steps
            found = []
            if t.warmup_steps > 0 and t.warmup_steps >= steps:
                found.append(f"train.warmup_steps={t.warmup_steps} but this run has {steps} optimizer steps: the "
                             f"learning rate stays in warmup and peaks at {steps}/{t.warmup_steps} of "
                             f"train.learning_rate={t.learning_rate}; fix: train.warmup_steps=0 "
                             f"train.warmup_ratio=0.03 (a share of the steps), or a train.warmup_steps below {steps}")
            if t.logging_steps > steps:
                found.append(f"train.logging_steps={t.logging_steps} but this run has {steps} optimizer steps: "
                             f"only the final step's loss is logged ({LOSSES}); fix: "
                             f"train.logging_steps={max(steps // 10, 1)} for a loss curve")
            if state.is_world_process_zero:
                for message in found:
                    log.warning("%s", message)
            warnings.extend(found)
            return control

    return ScheduleCheck()


def plot(path: Path, out: Path) -> Path | None:
    """Train (and eval) loss against step as a PNG; None when nothing was logged or matplotlib is missing."""
    rows = read(path)
    train = [(r["step"], r["loss"]) for r in rows if "loss" in r]
    evals = [(r["step"], r["eval_loss"]) for r in rows if "eval_loss" in r]
    if not train and not evals:
        return None
    try:
        import matplotlib
    except ImportError:
        logging.getLogger("gemma_run.training").warning(
            "%s not drawn: matplotlib is not installed (pip install 'gemma-run[train]', or pip install "
            "matplotlib); the losses are in %s", out.name, path)
        return None

    matplotlib.use("Agg")  # no display on a training node
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    if train:
        ax.plot(*zip(*train, strict=True), label="train")
    if evals:
        ax.plot(*zip(*evals, strict=True), marker="o", label="eval")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def log_at_saves() -> Any:
    """A TrainerCallback that logs the loss at every save step, so each checkpoint's log history ends exactly at its
    step and a run resumed from it can count the loss of every step before it (:func:`whole_run_loss`)."""
    from transformers import TrainerCallback

    class LogAtSaves(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if control.should_save:  # set by the Trainer's own flow callback, which runs before this one
                control.should_log = True
            return control

    return LogAtSaves()


def whole_run_loss(history: list[dict[str, Any]], resumed_at: int, this_run_mean: float, global_step: int) -> float:
    """The mean train loss over every step of a run resumed at step ``resumed_at``, as an uninterrupted run reports
    it: the steps up to ``resumed_at`` from the checkpoint's log history (each logged loss is the mean since the
    previous log), the steps after it from this process's mean (the Trainer's ``training_loss``). Steps the
    history does not cover (a checkpoint saved without a log at its step) are left out of the mean."""
    total, steps, last = 0.0, 0, 0
    for entry in sorted((e for e in history if "loss" in e), key=lambda e: e["step"]):
        if last < entry["step"] <= resumed_at:
            total += entry["loss"] * (entry["step"] - last)
            steps += entry["step"] - last
            last = entry["step"]
    after = max(global_step - resumed_at, 0)
    return (total + this_run_mean * after) / max(steps + after, 1)
