"""launcher=torchrun: nproc_per_node ranks on this node through ``torch.distributed.run``; several nodes by a
static master (node_rank, master_addr, master_port) or a c10d rendezvous (rdzv_endpoint)."""

from __future__ import annotations

import sys

from gemma_run.distributed.launchers.base import Launcher


class Torchrun(Launcher):
    tensor_parallel = True

    def command(self, worker: list[str]) -> list[str]:
        la = self.cfg
        cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={la.nproc_per_node}",
               f"--nnodes={la.nnodes}"]
        if la.rdzv_endpoint:
            cmd += ["--rdzv_backend=c10d", f"--rdzv_endpoint={la.rdzv_endpoint}", f"--rdzv_id={la.rdzv_id}"]
        else:
            cmd += [f"--node_rank={la.node_rank}", f"--master_addr={la.master_addr}",
                    f"--master_port={la.master_port}"]
        return cmd + worker
