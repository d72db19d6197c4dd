"""A run dir that cannot be created or written (a read-only path, no permission): one message naming the dir
and the key that moves it, before Hydra writes its first file there."""

from __future__ import annotations

import sys
import uuid
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from gemma_run.app.errors import GemmaRunError

# which Hydra key places the dir, and what it defaults to (gemma_run/conf/config.yaml)
KEYS = {
    "run": ("hydra.run.dir", "outputs/DATE/TIME under the directory you run gemma-run in"),
    "sweep": ("hydra.sweep.dir", "multirun/DATE/TIME under the directory you run gemma-run in"),
}


def unwritable(path: Path, error: OSError, mode: str = "run", resume: str | None = None) -> GemmaRunError:
    """The message for ``error`` (raised creating or writing ``path``), naming the key that moves the dir."""
    key, default = KEYS[mode]
    reason = error.strerror or str(error)
    what = "run dir" if mode == "run" else "sweep dir"
    if resume:
        fix = (f"copy the run to a writable place and resume from the copy: cp -r {path} /writable/place/ && "
               f"gemma-run ... resume=/writable/place/{path.name}")
        key = "resume"
    else:
        fix = f"{key}=/a/writable/dir (default: {default}), or fix the permissions of {path}"
    return GemmaRunError(f"cannot write the {what} {path}: {reason}", key=key, fix=fix)


def try_write(path: Path) -> None:
    """Create ``path`` (parents too) and write and remove a probe file in it; the OSError when that fails."""
    probe = path / f".write-test-{uuid.uuid4().hex[:8]}"
    path.mkdir(parents=True, exist_ok=True)
    probe.write_text("")
    probe.unlink()


def check(path: str | Path, mode: str = "run", resume: str | None = None) -> None:
    """:func:`try_write` ``path``; raise :func:`unwritable`'s error when that fails."""
    try:
        try_write(Path(path))
    except OSError as e:
        raise unwritable(Path(path), e, mode, resume) from None


class CheckRunDir(Callback):
    """A Hydra callback (gemma_run/conf/config.yaml), run before Hydra creates the run dir (or the sweep dir) and
    saves its config there: a dir that cannot be written is one message naming it and the key that moves it."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._check(config.hydra.run.dir, "run", OmegaConf.select(config, "resume"))

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._check(config.hydra.sweep.dir, "sweep", None)

    @staticmethod
    def _check(path: str, mode: str, resume: str | None) -> None:
        try:
            check(path, mode, resume)
        except GemmaRunError as e:  # Hydra turns a callback's exception into a warning: exit here instead
            print(e.format(), file=sys.stderr)
            sys.exit(e.exit_code)
