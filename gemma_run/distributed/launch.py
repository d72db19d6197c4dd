"""Multi-process launch: the resolved config written once, then the ``launcher`` group's command (torchrun, the
deepspeed launcher: gemma_run.distributed.launchers) on the worker.

Each rank runs ``python -m gemma_run.distributed.worker <run_dir>``, which reads that file: no rank composes a
config of its own (each would make its own timestamped run dir), and every rank trains from the same values. This
process waits, then reads the result rank 0 wrote; a failed rank's error comes back as this run's error.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from gemma_run.app.context import write_json
from gemma_run.app.errors import GemmaRunError

log = logging.getLogger(__name__)

CONFIG = "train_config.yaml"  # the resolved config every rank reads
RESULT = "worker_result.json"  # rank 0's result
ERROR = "worker_error.json"  # the first user-fixable error a rank met


def write_config(cfg: DictConfig, run_dir: Path) -> Path:
    """The config with every interpolation resolved (cache_dir from the env, ...), written atomically.

    Secret env values are written as [REDACTED]: the ranks inherit them from this process's environment
    (the env plugin exported them here), and read_config drops the redacted entries."""
    from gemma_run.app.redact import redact_config

    path = run_dir / CONFIG
    tmp = path.with_name(f".{path.name}.tmp")
    resolved = redact_config(OmegaConf.to_container(cfg, resolve=True, enum_to_str=True))
    tmp.write_text(OmegaConf.to_yaml(_literal(resolved)))
    tmp.replace(path)
    return path


def _literal(node: Any) -> Any:
    """Resolved values kept as they are when read back: a ``${...}`` inside a value (a prompt's text) is escaped, so
    the ranks' OmegaConf does not take it for an interpolation."""
    from gemma_run.app.free_text import escape_interpolation

    if isinstance(node, str):
        return escape_interpolation(node)
    if isinstance(node, list):
        return [_literal(item) for item in node]
    if isinstance(node, dict):
        return {key: _literal(value) for key, value in node.items()}
    return node


def worker_args(run_dir: Path, resume_from: Path | None) -> list[str]:
    args = ["-m", "gemma_run.distributed.worker", str(run_dir)]
    return args + (["--resume-from", str(resume_from)] if resume_from else [])


def _stdout(what: str) -> int | None:
    """Training ranks print nothing for the user: their stdout (the deepspeed launcher's and DeepSpeed's log,
    the Trainer's loss dicts) joins stderr. Inference ranks keep stdout: rank 0 prints the completions there."""
    if what != "training":
        return None
    try:
        return sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):  # a stderr without a file (a notebook's): leave stdout alone
        return None


def launch(cfg: DictConfig, run_dir: Path, resume_from: Path | None, what: str = "training") -> dict[str, Any]:
    """Start the processes, wait for them, and return rank 0's result. ``what`` the ranks do, "training" (they
    read the deepspeed group; their stdout joins stderr) or "inference", is said by the task that launches."""
    from gemma_run.distributed import launchers
    from gemma_run.training import deepspeed_config

    run_dir = Path(run_dir)
    launcher = launchers.from_cfg(cfg.launcher)
    ds = deepspeed_config.render(cfg.deepspeed) if what == "training" else None
    if ds is not None:
        write_json(run_dir / "ds_config.json", ds)  # for reading only: every rank renders the same dict
    for name in (RESULT, ERROR):
        (run_dir / name).unlink(missing_ok=True)
    cmd = launcher.command(worker_args(run_dir, resume_from))
    log.info("launch: %s", " ".join(cmd))
    try:
        proc = subprocess.run(cmd, check=False, stdout=_stdout(what))
    finally:
        launcher.after_run(run_dir)
    if launcher.secondary_node:
        if proc.returncode != 0:
            raise GemmaRunError(f"this node's {what} processes failed (exit {proc.returncode})", key="launcher",
                                fix="read the first traceback above, and node 0's log")
        return {"node_rank": cfg.launcher.node_rank, "outputs": "written by node 0 (rank 0)"}
    if (run_dir / ERROR).is_file():
        error = json.loads((run_dir / ERROR).read_text())
        raise GemmaRunError(error["problem"], key=error.get("key"), fix=error.get("fix"))
    if proc.returncode != 0:
        raise GemmaRunError(f"the {what} processes failed (the launcher exited with {proc.returncode}); "
                            "the first rank's traceback is above", key="launcher",
                            fix=f"read the first traceback; launcher=local runs the same {what} in one process"
                                + (" (with device_map=auto)" if what == "inference" else ""))
    if not (run_dir / RESULT).is_file():
        raise GemmaRunError(f"the {what} processes exited without a result ({run_dir / RESULT})",
                            key="launcher", fix="read the log above for the failing rank")
    return json.loads((run_dir / RESULT).read_text())
