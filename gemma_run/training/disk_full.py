"""A disk that fills up while training: one message with the path, the space a checkpoint needs, the last whole
checkpoint and the command that continues the run from it.

Writers report a full disk differently: Python's OSError ENOSPC (the loss log, the checkpoint marker, json),
safetensors' "StorageFull" text, and torch.save's RuntimeError from its zip writer ("unexpected pos ...",
"file write failed"), which names no errno. The last kind counts as a full disk only when the output dir's
file system has less free space than a checkpoint takes.
"""

from __future__ import annotations

import errno
import shlex
import shutil
from pathlib import Path
from typing import Any

from gemma_run.app.errors import GemmaRunError
from gemma_run.training import checkpoint_integrity

FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
FULL_TEXT = ("No space left on device", "StorageFull", "Disk quota exceeded")
# torch.save's zip writer on a failed write (inline_container.cc); no errno survives
WRITER_TEXT = ("PytorchStreamWriter failed", "file write failed", "unexpected pos")


def _chain(error: BaseException) -> list[BaseException]:
    out: list[BaseException] = []
    e: BaseException | None = error
    while e is not None and all(e is not seen for seen in out):
        out.append(e)
        e = e.__cause__ or e.__context__
    return out


def _size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _fmt(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def checkpoint_bytes(out: Path, model: Any) -> tuple[int, str]:
    """(bytes, how known): the newest checkpoint's size, else an estimate from the trainable parameters
    (their weights plus AdamW's two fp32 states each)."""
    for _step, ckpt in checkpoint_integrity.checkpoints(out):
        if checkpoint_integrity.problem(ckpt) is None:
            return _size(ckpt), f"the size of {ckpt.name}"
    trainable = [p for p in model.parameters() if p.requires_grad] if model is not None else []
    estimate = sum(getattr(p, "ds_numel", p.numel()) * (p.element_size() + 8) for p in trainable) + 2**20
    return estimate, "estimated: trainable weights + AdamW state"


def last_good(out: Path) -> Path | None:
    """The newest checkpoint whose completion marker matches its files (nothing is moved)."""
    return next((ckpt for _step, ckpt in checkpoint_integrity.checkpoints(out)
                 if checkpoint_integrity.problem(ckpt) is None), None)


def _overrides(run_dir: Path) -> list[str]:
    """The command line's overrides of this run (Hydra's, in-process; else the ones saved in the run dir)."""
    from omegaconf import OmegaConf

    try:
        from hydra.core.hydra_config import HydraConfig

        if HydraConfig.initialized():
            return [str(o) for o in HydraConfig.get().overrides.task]
    except (ImportError, ValueError):
        pass
    saved = sorted((run_dir / ".hydra").glob("**/overrides.yaml"), key=lambda p: p.stat().st_mtime)
    return [str(o) for o in OmegaConf.load(saved[-1])] if saved else ["task=train"]


def resume_command(run_dir: Path) -> str:
    """`gemma-run <this run's overrides> resume=<run dir>`, secrets redacted."""
    from gemma_run.app.redact import redact_config

    dropped = ("resume=", "hydra.run.dir=", "hydra.output_subdir=")
    kept = [o for o in redact_config(_overrides(run_dir)) if not o.lstrip("+~").startswith(dropped)]
    return " ".join(["gemma-run", *(shlex.quote(o) for o in kept), shlex.quote(f"resume={run_dir.resolve()}")])


def as_user_error(error: BaseException, out: Path, run_dir: Path, model: Any) -> GemmaRunError | None:
    """The GemmaRunError for ``error`` when it is a full disk under ``out``, else None."""
    chain = _chain(error)
    full = next((e for e in chain if isinstance(e, OSError) and e.errno in FULL_ERRNOS), None)
    full = full or next((e for e in chain if any(t in str(e) for t in FULL_TEXT)), None)
    needed, how = checkpoint_bytes(out, model)
    try:
        free = shutil.disk_usage(out).free
    except OSError:
        free = None
    if full is None:
        writer = next((e for e in chain if any(t in str(e) for t in WRITER_TEXT)), None)
        if writer is None or free is None or free >= needed:
            return None
        full = writer
    path = getattr(full, "filename", None) or out
    reason = getattr(full, "strerror", None) or str(full).splitlines()[0][:200]
    good = last_good(out)
    if good is not None:
        then = f"then continue from the last complete checkpoint, {good.name} ({good}), with"
    else:
        then = "then run again (no checkpoint was completed: it starts from step 0) with"
    free_text = f"{_fmt(free)} free" if free is not None else "free space unknown"
    return GemmaRunError(
        f"the disk is full: writing {path} failed ({reason}); {free_text} under {out}, a checkpoint needs "
        f"about {_fmt(needed)} ({how})", key="train.output_dir",
        fix=f"free at least {_fmt(needed)} there (adding train.save_total_limit=1 keeps one checkpoint at a "
            f"time); {then}: {resume_command(run_dir)}")
