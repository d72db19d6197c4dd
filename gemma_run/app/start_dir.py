"""Relative paths in the config are relative to the directory gemma-run was started in.

With ``hydra.job.chdir=true`` Hydra runs each job inside its run dir, where a relative ``prompts_file``,
``data.train_file`` or ``model.path`` would name nothing. :func:`resolve_paths` makes every path key of
gemma_run/schema/user_input.py absolute against the start directory before the run reads any of them.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from gemma_run.schema.user_input import NAME_OR_PATH_KEYS, PATH_KEYS

log = logging.getLogger(__name__)


def resolve_paths(cfg: DictConfig, start_dir: str | Path) -> dict[str, str]:
    """Make the relative path keys of ``cfg`` absolute against ``start_dir``, in place, when the process no longer
    runs there (a job Hydra moved into its run dir). Returns key -> new value for those changed."""
    start = Path(start_dir)
    if Path.cwd().resolve() == start.resolve():
        return {}
    changed = {}
    for key in (*PATH_KEYS, *NAME_OR_PATH_KEYS):
        value = OmegaConf.select(cfg, key, default=None)
        if not isinstance(value, str) or not value or os.path.isabs(os.path.expanduser(value)):
            continue
        absolute = start / value
        if key in NAME_OR_PATH_KEYS and not absolute.exists():
            continue  # a name (a model option), not a path
        OmegaConf.update(cfg, key, str(absolute), merge=False)
        changed[key] = str(absolute)
    if changed:
        log.info("relative paths read from %s (hydra.job.chdir=true runs in %s): %s", start, Path.cwd(),
                 ", ".join(f"{k}={v}" for k, v in changed.items()))
    return changed
