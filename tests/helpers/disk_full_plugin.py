"""A user plugin for tests: the disk fills up while a checkpoint is written (added through config).

After ``saves`` whole checkpoints, the next one gets its weights written, then a truncated optimizer.pt and
OSError ENOSPC, as torch.save's file write ends on a full disk.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path


class DiskFullAfter:
    def __init__(self, saves: int) -> None:
        self.saves = saves

    def __call__(self, ctx) -> None:
        from transformers import Trainer

        original = Trainer._save_optimizer_and_scheduler
        calls = {"n": 0}

        def save(trainer, output_dir: str) -> None:
            calls["n"] += 1
            if calls["n"] <= self.saves:
                return original(trainer, output_dir)
            path = Path(output_dir) / "optimizer.pt"
            path.write_bytes(b"PK\x03\x04")  # what a zip writer leaves before the disk runs out
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

        Trainer._save_optimizer_and_scheduler = save
