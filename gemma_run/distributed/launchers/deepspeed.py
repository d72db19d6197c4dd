"""launcher=deepspeed: DeepSpeed's own launcher, nproc_per_node ranks here, or the nodes of launcher.hostfile
(lines "host slots=N") started over ssh from this node."""

from __future__ import annotations

import sys
from pathlib import Path

from gemma_run.distributed.launchers.base import Launcher


class DeepSpeed(Launcher):
    runs_deepspeed = True

    def command(self, worker: list[str]) -> list[str]:
        # --module runs `python -m gemma_run.distributed.worker`; the launcher adds --local_rank, which the worker
        # accepts and ignores (LOCAL_RANK is in its environment too)
        la = self.cfg
        module, *args = worker
        if module != "-m":
            raise ValueError(f"the deepspeed launcher runs a module (-m ...), not {worker}")
        cmd = [sys.executable, "-m", "deepspeed.launcher.runner", f"--master_addr={la.master_addr}",
               f"--master_port={la.master_port}"]
        if la.hostfile:
            cmd += [f"--hostfile={la.hostfile}", f"--num_nodes={la.nnodes}"]
        else:
            cmd += [f"--num_gpus={la.nproc_per_node}", f"--num_nodes={la.nnodes}", f"--node_rank={la.node_rank}"]
        return [*cmd, "--module", *args]

    @property
    def secondary_node(self) -> bool:
        # with a hostfile this node starts every node's ranks over ssh, node 0's included
        return super().secondary_node and not self.cfg.hostfile

    def after_run(self, run_dir: Path) -> None:
        """The deepspeed launcher leaves its ranks' shared-memory allreduce buffers in /dev/shm; they are named
        after this run's master address and port, so only this run's are removed."""
        shm = Path("/dev/shm")
        if shm.is_dir():
            for path in shm.glob(f"deepspeed_*_{self.cfg.master_addr}_{self.cfg.master_port}_*"):
                path.unlink(missing_ok=True)
