"""Probe (GPU): training knobs the config does not expose, each run as `task=bench_train` in its own process.

    . bench/gpu_env.sh && python3 bench/train_probe.py VARIANT [gemma-run overrides ...]

VARIANT:
- ``base``: the defaults, unchanged;
- ``flash``: torch's cuDNN attention off, so sdpa takes its flash (or memory-efficient) kernel;
- ``reentrant``: reentrant activation checkpointing (torch.utils.checkpoint's older mode, less bookkeeping per
  saved tensor) instead of the defaults' non-reentrant;
- ``both``: the two together.

A probe, not a feature: a variant that pays its way becomes a config key, measured again through it.
"""

from __future__ import annotations

import sys


def main() -> None:
    variant = sys.argv.pop(1)
    if variant not in ("base", "flash", "reentrant", "both"):
        raise SystemExit(f"unknown variant {variant!r}: base | flash | reentrant | both")
    if variant in ("flash", "both"):
        import torch

        torch.backends.cuda.enable_cudnn_sdp(False)
    if variant in ("reentrant", "both"):
        from gemma_run.training import trainer

        real = trainer.arguments

        def arguments(*args, **kwargs):
            out = real(*args, **kwargs)
            for name in ("gradient_checkpointing_kwargs", "activation_checkpointing_kwargs"):
                if getattr(out, name, None):
                    setattr(out, name, {"use_reentrant": True})
                    print(f"probe: TrainingArguments.{name} = {{'use_reentrant': True}}", flush=True)
            return out

        trainer.arguments = arguments
    from gemma_run.cli import main as cli

    cli()


if __name__ == "__main__":
    main()
