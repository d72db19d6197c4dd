"""launcher=local: the run stays in this process (one GPU, a device map over several, or the CPU)."""

from __future__ import annotations

from gemma_run.distributed.launchers.base import Launcher


class Local(Launcher):
    launches = False

    def problems(self) -> list:
        from gemma_run.app.errors import ConfigError

        la = self.cfg
        if la.nproc_per_node != 1 or la.nnodes != 1:
            return [ConfigError(f"launcher=local runs one process, but launcher.nproc_per_node={la.nproc_per_node} "
                                f"launcher.nnodes={la.nnodes}", key="launcher",
                                fix="launcher=torchrun (or launcher=deepspeed) to start several processes"),
                    *super().problems()]
        return super().problems()
