"""One live run per run dir: fresh default dirs claimed atomically, and a lock the launching process holds.

A default run dir (outputs/DATE/HH-MM-SS) is claimed with ``mkdir``, which only one process can win: a second run
started in the same second gets HH-MM-SS_2 (then _3, ...). Any run dir, default or chosen (``hydra.run.dir=``,
``resume=``), is locked while its run lives: ``fcntl.flock`` on ``.gemma-run.lock``, whose text names the holder
(pid, host, start time, command line with secrets redacted) so a refused run can say who has it. The lock belongs
to the open file, so the kernel drops it when the process ends however it ends: a file left by a killed run holds
no lock, and the next run takes it over. Processes started by the launcher (torchrun / deepspeed workers) share the
dir with the process that holds the lock and never take it.
"""

from __future__ import annotations

import atexit
import errno
import fcntl
import functools
import itertools
import json
import logging
import os
import shlex
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from gemma_run.app.errors import GemmaRunError

log = logging.getLogger(__name__)

LOCK = ".gemma-run.lock"
_held: dict[str, int] = {}  # run dir (resolved) -> the open, locked file of its lock
F = TypeVar("F", bound=Callable[..., Any])


def claim(base: str | Path) -> Path:
    """A new, empty run dir: ``base`` if this process creates it, else ``base_2``, ``base_3``, ... (the first one
    this process creates; ``mkdir`` fails for every other process, so no two runs get the same dir)."""
    base = Path(base)
    base.parent.mkdir(parents=True, exist_ok=True)
    for n in itertools.count(1):
        path = base if n == 1 else base.with_name(f"{base.name}_{n}")
        try:
            path.mkdir()
        except FileExistsError:
            continue
        return path
    raise AssertionError("unreachable")


def _command() -> str:
    """This process's command line as typed (sys.argv may have been rewritten since), secrets redacted."""
    from gemma_run.app.redact import redact_text

    argv = list(getattr(sys, "orig_argv", sys.argv))  # python [-m gemma_run.app.cli | .../gemma-run] args...
    for i, arg in enumerate(argv):
        if Path(arg).name in ("gemma-run", "cli.py") or (arg == "gemma_run.app.cli" and argv[i - 1] == "-m"):
            argv = ["gemma-run", *argv[i + 1:]]
            break
    return redact_text(shlex.join(argv))


def _holder(fd: int) -> dict[str, Any]:
    """What the lock file says about its holder ({} when empty or unreadable)."""
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        data = json.loads(os.read(fd, 65536) or b"{}")
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _busy(run_dir: Path, holder: dict[str, Any]) -> GemmaRunError:
    pid, host = holder.get("pid", "?"), holder.get("host", "?")
    where = "this machine" if host == socket.gethostname() else f"host {host}"
    started = holder.get("started", "?")
    return GemmaRunError(
        f"run dir {run_dir} is in use by another gemma-run: pid {pid} on {where}, started {started}: "
        f"{holder.get('command', '?')}",
        key="hydra.run.dir",
        fix=f"wait for pid {pid} to end, or run in another dir: hydra.run.dir=outputs/<new name> (or leave "
            "hydra.run.dir and resume= unset for a fresh one)")


def acquire(run_dir: str | Path) -> bool:
    """Lock ``run_dir`` for this process. True when this call took the lock, False when this process already
    holds it (or the dir cannot be written: the run's own writability check reports that). Raises
    :class:`GemmaRunError` naming the other process when a live one holds it."""
    run_dir = Path(run_dir)
    key = str(run_dir.resolve())
    if key in _held:
        return False
    path = run_dir / LOCK
    while True:
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            holder = _holder(fd)
            os.close(fd)
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise _busy(run_dir, holder) from None
            log.warning("run dir %s: cannot lock %s (%s); a second run in this dir would not be refused",
                        run_dir, LOCK, e.strerror)
            return False
        # the holder may have released and removed the file between our open and our lock: lock the file there
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    previous = _holder(fd)
    if previous:
        log.info("run dir %s: taking over the lock left by pid %s (%s), which no longer runs", run_dir,
                 previous.get("pid", "?"), previous.get("command", "?"))
    me = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S"),
          "command": _command()}
    os.ftruncate(fd, 0)
    os.lseek(fd, 0, os.SEEK_SET)
    os.write(fd, (json.dumps(me) + "\n").encode())
    _held[key] = fd
    return True


def release(run_dir: str | Path) -> None:
    """Give the lock back and remove its file (removed while still locked, so no one locks a file being deleted)."""
    run_dir = Path(run_dir)
    fd = _held.pop(str(run_dir.resolve()), None)
    if fd is None:
        return
    try:
        (run_dir / LOCK).unlink(missing_ok=True)
    except OSError:
        pass  # a dir that became unwritable: the kernel still drops the lock when the file closes
    fcntl.flock(fd, fcntl.LOCK_UN)
    os.close(fd)


@atexit.register
def _release_all() -> None:
    for key in list(_held):
        release(key)


def owns_run_dir(fn: F) -> F:
    """Decorate ``fn(cfg, run_dir, ...)``: the run dir is locked while it runs (unless this process holds it)."""

    @functools.wraps(fn)
    def wrapper(cfg: Any, run_dir: str | Path, *args: Any, **kwargs: Any) -> Any:
        owned = acquire(run_dir)
        try:
            return fn(cfg, run_dir, *args, **kwargs)
        finally:
            if owned:
                release(run_dir)

    return wrapper  # type: ignore[return-value]
