"""OmegaConf resolvers the configs use (registered by the entry points before composing)."""

from __future__ import annotations

import json
from pathlib import Path

from omegaconf import OmegaConf

from gemma_run.app.errors import ConfigError

# The fresh dirs run_dir returned: the LockRunDir callback claims each (a second run started in the same second
# gets DIR_2), so two default runs never share a dir. A dir the user chose or a resumed one is kept as given.
FRESH: set[str] = set()


def run_dir(resume: str | None, task_name: str | None, default: str) -> str:
    """hydra.run.dir: a fresh dir, or the dir of the run to continue (resume=PATH | resume=auto)."""
    if resume in (None, "", "none", "null"):
        FRESH.add(default)
        return default
    if resume != "auto":
        path = Path(resume).expanduser()
        if not (path / ".hydra" / "config.yaml").is_file():
            raise ConfigError(f"resume={resume}: not a gemma-run run dir (no .hydra/config.yaml there)",
                              key="resume", fix="pass a run dir under outputs/, or resume=auto")
        return str(path)
    found = newest_run_dir(Path(default).parent.parent, task_name)
    if found is None:
        FRESH.add(default)
    return str(found) if found is not None else default


def resumable(path: Path) -> bool:
    """A run that stopped before finishing and left work to continue (checkpoints or generations)."""
    result = path / "result.json"
    if result.is_file():
        try:
            if json.loads(result.read_text()).get("status") == "ok":
                return False
        except ValueError:
            pass
    return any(path.glob("checkpoint-*")) or (path / "generations.jsonl").is_file()


def newest_run_dir(outputs: Path, task_name: str | None) -> Path | None:
    """The newest outputs/DATE/TIME dir of ``task_name`` that was interrupted with work to continue
    (a run that failed before doing anything, or one that finished, is not picked)."""
    if not outputs.is_dir():
        return None
    candidates = sorted((p for p in outputs.glob("*/*") if (p / ".hydra" / "config.yaml").is_file()),
                        key=_started, reverse=True)
    for path in candidates:
        saved = OmegaConf.load(path / ".hydra" / "config.yaml")
        if (task_name is None or OmegaConf.select(saved, "task.name") == task_name) and resumable(path):
            return path
    return None


def _started(path: Path) -> tuple[str, str, int]:
    """Sort key of outputs/DATE/TIME[_N]: a second run of the same second (TIME_2, ..., TIME_10) after the first."""
    stem, sep, n = path.name.rpartition("_")
    return (path.parent.name, stem, int(n)) if sep and n.isdigit() else (path.parent.name, path.name, 1)


def output_subdir(resume: str | None, stamp: str) -> str:
    """Where Hydra saves the resolved config: .hydra, or for a resumed run .hydra/resume-STAMP, so the
    original run's .hydra/config.yaml is never overwritten."""
    return ".hydra" if resume in (None, "", "none", "null") else f".hydra/resume-{stamp}"


def register() -> None:
    if not OmegaConf.has_resolver("gr_run_dir"):
        OmegaConf.register_new_resolver("gr_run_dir", run_dir)
    if not OmegaConf.has_resolver("gr_output_subdir"):
        OmegaConf.register_new_resolver("gr_output_subdir", output_subdir)
