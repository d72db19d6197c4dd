"""The interface every launcher implements: whether it starts processes at all, the command line that starts them
on the worker entry, its config problems, and what it leaves behind to clean up."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar


class Launcher:
    """One way of starting a run's processes; ``cfg`` is the run's ``launcher`` group."""

    launches: ClassVar[bool] = True  # False: the run stays in this process (launcher=local)
    runs_deepspeed: ClassVar[bool] = False  # its command is DeepSpeed's own launcher (needs deepspeed installed)
    # device_map=tp can run under it: transformers' tensor-parallel loader starts its process group from the
    # environment this launcher gives each rank
    tensor_parallel: ClassVar[bool] = False

    def __init__(self, cfg: Any) -> None:
        self.cfg = cfg

    def problems(self) -> list:
        """Config errors found without importing anything heavy (checked by the tasks that launch)."""
        from gemma_run.app.errors import ConfigError

        la = self.cfg
        if la.nproc_per_node < 1 or la.nnodes < 1:
            return [ConfigError("launcher.nproc_per_node and launcher.nnodes must be >= 1", key="launcher",
                                fix="launcher.nproc_per_node=2")]
        return []

    def command(self, worker: list[str]) -> list[str]:
        """The command line that runs ``python <worker...>`` (``-m gemma_run.distributed.worker RUN_DIR ...``) on
        every rank."""
        raise NotImplementedError(f"launcher={self.cfg.name} runs in this process and starts no command")

    @property
    def secondary_node(self) -> bool:
        """Whether this process launches the ranks of a node other than node 0 (whose rank 0 writes the outputs)."""
        return int(self.cfg.node_rank) > 0

    def after_run(self, run_dir: Path) -> None:
        """Remove what the launched processes leave behind outside the run dir (called even when they failed)."""
