"""Schema of the ``env`` group: environment variables exported before torch, CUDA or NCCL start."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class EnvConfig:
    name: str = "default"
    # Variables to export. Add any from the command line: +env.vars.NCCL_DEBUG=WARN
    vars: dict[str, str] = field(default_factory=dict)
    # true: our value replaces one already set in the shell; false: a variable already set is kept.
    override: bool = False
