"""Checkpoints that are either whole or ignored.

The HF Trainer writes `checkpoint-N/` file by file (model, optimizer, scheduler, RNG, trainer state), then
rotates old ones out (`train.save_total_limit`). A crash in the middle leaves a dir that looks like the newest
checkpoint but cannot be resumed. So after every save, once all ranks are done, rank 0 writes a marker into the
dir listing each file with its size (and a SHA-256 for files small enough to hash quickly), atomically, last.
On resume the newest checkpoint whose marker matches its files is used; a newer one that does not match is
moved aside to `incomplete-checkpoint-N` (kept, not deleted), and the message says so.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gemma_run.app.context import write_json

log = logging.getLogger(__name__)

MARKER = "gemma_run_complete.json"
HASH_LIMIT = 256 * 2**20  # files above 256 MiB (full-model optimizer state) are checked by size only
_STEP = re.compile(r"^checkpoint-(\d+)$")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _files(ckpt: Path) -> list[Path]:
    return sorted(p for p in ckpt.rglob("*") if p.is_file() and p.name != MARKER)


def mark_complete(ckpt: Path, step: int) -> Path:
    """Record what a finished checkpoint holds (called once every rank has written its part)."""
    files = {}
    for p in _files(ckpt):
        size = p.stat().st_size
        files[str(p.relative_to(ckpt))] = {"size": size, "sha256": _sha256(p) if size <= HASH_LIMIT else None}
    return write_json(ckpt / MARKER, {"step": step, "files": files})


def problem(ckpt: Path) -> str | None:
    """Why ``ckpt`` cannot be resumed from, or None when it is whole."""
    import json

    marker = ckpt / MARKER
    if not marker.is_file():
        return "no completion marker (the save was interrupted)"
    try:
        listed = json.loads(marker.read_text())["files"]
    except (ValueError, KeyError) as e:
        return f"unreadable marker ({e})"
    for rel, meta in listed.items():
        p = ckpt / rel
        if not p.is_file():
            return f"{rel} is missing"
        if p.stat().st_size != meta["size"]:
            return f"{rel} has {p.stat().st_size} bytes, {meta['size']} were written"
        if meta.get("sha256") and _sha256(p) != meta["sha256"]:
            return f"{rel} does not match its checksum"
    return None


def checkpoints(output_dir: Path) -> list[tuple[int, Path]]:
    """(step, dir) of every checkpoint-N dir, newest first."""
    if not output_dir.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in output_dir.iterdir() if p.is_dir() and (m := _STEP.match(p.name))]
    return sorted(found, reverse=True)


@dataclass
class ResumePoint:
    checkpoint: Path | None
    skipped: list[tuple[Path, str]] = field(default_factory=list)  # (moved-to path, reason)

    @property
    def step(self) -> int:
        return int(_STEP.match(self.checkpoint.name).group(1)) if self.checkpoint else 0


def find_resume(output_dir: Path) -> ResumePoint:
    """The newest whole checkpoint; newer broken ones are moved aside (and reported)."""
    point = ResumePoint(None)
    for _step, ckpt in checkpoints(output_dir):
        why = problem(ckpt)
        if why is None:
            point.checkpoint = ckpt
            break
        aside = ckpt.with_name(f"incomplete-{ckpt.name}")
        n = 1
        while aside.exists():
            n += 1
            aside = ckpt.with_name(f"incomplete-{ckpt.name}.{n}")
        os.replace(ckpt, aside)
        log.warning("resume: skipping %s: %s; moved to %s", ckpt.name, why, aside.name)
        point.skipped.append((aside, why))
    if point.checkpoint is not None:
        log.info("resume: continuing from %s", point.checkpoint)
    else:
        log.warning("resume: no complete checkpoint in %s; training starts from step 0", output_dir)
    return point


def completion_callback() -> Any:
    """A TrainerCallback that marks each checkpoint complete after the Trainer (on every rank) wrote it."""
    from transformers import TrainerCallback

    class MarkComplete(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            import torch.distributed as dist

            if dist.is_available() and dist.is_initialized():
                dist.barrier()  # every rank's optimizer shards are written before the marker says so
            ckpt = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            if state.is_world_process_zero and ckpt.is_dir():
                mark_complete(ckpt, state.global_step)
            return control

    return MarkComplete()
