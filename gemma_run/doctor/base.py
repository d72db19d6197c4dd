"""What a check is and what it returns: one Finding with a status, a one-line finding and the fix."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

STATUSES = ("pass", "warn", "fail", "skip")


@dataclass
class Finding:
    """The outcome of one check. ``fix`` is required for warn/fail (what the user should do);
    for skip it says how to make the check run. ``details`` goes to report.json only."""

    status: str
    finding: str
    fix: str | None = None
    details: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"status {self.status!r} is not one of {STATUSES}")


@dataclass
class CheckResult:
    """A Finding with the check's name and how long it took (what the report shows)."""

    name: str
    status: str
    finding: str
    fix: str | None
    seconds: float
    details: dict[str, Any] = field(default_factory=dict)


@dataclass
class DoctorContext:
    """What checks share: the run config, the run dir and the task's options (``cfg.task``)."""

    cfg: Any
    run_dir: Path
    cache: dict[str, Any] = field(default_factory=dict)  # results one check computes and another reuses


@dataclass(frozen=True)
class Check:
    name: str  # "<family>.<what>", e.g. "versions.torch"
    fn: Callable[[DoctorContext], Finding]
    doc: str  # one line: what it verifies

    @property
    def family(self) -> str:
        return self.name.partition(".")[0]


def gpu_count() -> int:
    """Visible CUDA GPUs (0 without CUDA or without a CUDA build of torch)."""
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def no_gpu_reason() -> str:
    """Why no GPU is visible, in words: a CPU build of torch, or no device behind a CUDA build."""
    import torch

    from gemma_run.app import env

    if torch.version.cuda is None:
        return f"torch {torch.__version__} is a CPU build (no CUDA)"
    visible = env.get("CUDA_VISIBLE_DEVICES")
    hidden = f", CUDA_VISIBLE_DEVICES={visible!r}" if visible is not None else ""
    return f"torch {torch.__version__} (CUDA {torch.version.cuda}) sees no GPU{hidden}"
