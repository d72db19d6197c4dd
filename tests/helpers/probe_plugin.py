"""A user plugin for tests: records what the process looked like when it ran (added through config)."""

from __future__ import annotations

import json
import sys


class Probe:
    def __init__(self, out: str) -> None:
        self.out = out

    def __call__(self, ctx) -> None:
        import torch  # imported here on purpose: after the env plugin, as any task would

        data = {
            "torch_threads": torch.get_num_threads(),
            "env_result": ctx.result.get("env", {}),
            "modules_before": sorted(m for m in ("transformers", "peft", "bitsandbytes") if m in sys.modules),
        }
        with open(self.out, "w") as f:
            json.dump(data, f)


class Recorder:
    """Appends its tag to a file when called, so a test can see the order plugins ran in."""

    def __init__(self, tag: str, out: str) -> None:
        self.tag, self.out = tag, out

    def __call__(self, ctx) -> None:
        with open(self.out, "a") as f:
            f.write(self.tag + "\n")


class CpuFlags:
    """Makes this process report the given CPU feature flags, so a test takes the branch another CPU would."""

    def __init__(self, flags: list[str]) -> None:
        self.flags = set(flags)

    def __call__(self, ctx) -> None:
        from gemma_run.quant import bitsandbytes as quantization

        quantization.cpu_flags = lambda: set(self.flags)
