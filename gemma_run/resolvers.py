"""OmegaConf resolvers the configs use (registered by the entry points before composing)."""

from __future__ import annotations

from pathlib import Path

from omegaconf import OmegaConf

from gemma_run.errors import ConfigError


def run_dir(resume: str | None, task_name: str | None, default: str) -> str:
    """hydra.run.dir: a fresh dir, or the dir of the run to continue (resume=PATH | resume=auto)."""
    if resume in (None, "", "none", "null"):
        return default
    if resume != "auto":
        path = Path(resume).expanduser()
        if not (path / ".hydra" / "config.yaml").is_file():
            raise ConfigError(f"resume={resume}: not a gemma-run run dir (no .hydra/config.yaml there)",
                              key="resume", fix="pass a run dir under outputs/, or resume=auto")
        return str(path)
    found = newest_run_dir(Path(default).parent.parent, task_name)
    return str(found) if found is not None else default


def newest_run_dir(outputs: Path, task_name: str | None) -> Path | None:
    """The newest outputs/DATE/TIME dir whose saved config ran ``task_name``."""
    if not outputs.is_dir():
        return None
    candidates = sorted((p for p in outputs.glob("*/*") if (p / ".hydra" / "config.yaml").is_file()), reverse=True)
    for path in candidates:
        saved = OmegaConf.load(path / ".hydra" / "config.yaml")
        if task_name is None or OmegaConf.select(saved, "task.name") == task_name:
            return path
    return None


def register() -> None:
    if not OmegaConf.has_resolver("gr_run_dir"):
        OmegaConf.register_new_resolver("gr_run_dir", run_dir)
