"""``deepspeed=auto``: which ZeRO stage a training run gets, from the memory plan, and why.

ZeRO partitions training state over the ranks; with one rank there is nothing to partition over, so ZeRO-3 on
one GPU saves no memory but still gathers every layer's weights each step, so it runs several times slower than
plain training (``ONE_GPU_SLOWDOWN``). So:

- no GPU: no DeepSpeed (the planner checks CPU memory; DeepSpeed would add its CPU accelerator's overhead);
- one process whose plan fits its GPU: no DeepSpeed;
- several processes: ZeRO-3 (weights, gradients and optimizer state split over them: a 27B on 3 GPUs);
- one process that does not fit: ZeRO-3 with CPU offload when that plan fits (slow but runs), else none, and
  the preflight refuses the run with its suggestions.

``resolve`` writes the choice into the config (``deepspeed.stage``, offload flags, ``deepspeed.reason``) once,
before the preflight plans and before workers are launched, so every rank trains with the same stage.
"""

from __future__ import annotations

import logging
from typing import Any

from omegaconf import DictConfig

from gemma_run import quant

log = logging.getLogger(__name__)

GiB = 2**30
# How much slower ZeRO-3 trains on one GPU than plain training, as deepspeed=auto's reason and the warning below
# quote it to the user; where the figure comes from: docs/benchmarks.md, "Why the defaults are what they are".
ONE_GPU_SLOWDOWN = 2.8


def _plan(cfg: DictConfig, **changes: Any) -> dict[str, Any]:
    from gemma_run.planning import inputs
    from gemma_run.planning.plan import make_plan, with_changes

    p, _ = inputs.from_cfg(cfg, "train")
    return make_plan(with_changes(p, **changes)), p


def _gpu_need(plan: dict[str, Any]) -> str:
    dev = next((d for d in plan["devices"] if d.startswith("cuda")), None)
    if dev is None:
        return ""
    d = plan["devices"][dev]
    return f"{d['total'] / GiB:.1f} of {d.get('capacity', 0) / GiB:.1f} GiB on {dev}"


def decide(cfg: DictConfig) -> tuple[int, bool, bool, str]:
    """(stage, offload_optimizer, offload_params, reason) for a ``deepspeed=auto`` run."""
    la = cfg.launcher
    world = int(la.nproc_per_node) * int(la.nnodes)
    if world > 1:
        return 3, False, False, (f"{world} processes: ZeRO-3 splits weights, gradients and optimizer state over "
                                 "them")
    plain, p = _plan(cfg, train_zero_stage=0, train_world=1, train_offload_optimizer=False,
                     train_offload_params=False)
    if not p.gpus:
        return 0, False, False, "no GPU: no DeepSpeed (ZeRO has nothing to split over one CPU process)"
    if plain["fits"]:
        return 0, False, False, (f"one GPU suffices ({_gpu_need(plain)}): ZeRO-3 on one GPU costs "
                                 f"~{ONE_GPU_SLOWDOWN}x speed for no memory gain")
    quantized = quant.from_cfg(cfg.quant).quantized
    offload, _ = _plan(cfg, train_zero_stage=3, train_world=1, train_offload_optimizer=True,
                       train_offload_params=not quantized)
    if offload["fits"]:
        return 3, True, not quantized, (f"does not fit one GPU without ZeRO ({_gpu_need(plain)}): ZeRO-3 with the "
                                        "optimizer state" + ("" if quantized else " and weights")
                                        + " offloaded to CPU memory (slower, but it fits)")
    return 0, False, False, (f"does not fit one GPU ({_gpu_need(plain)}), not even with ZeRO-3 CPU offload: "
                             "no DeepSpeed; the preflight says what would fit")


def resolve(cfg: DictConfig) -> str | None:
    """Fix the stage of a ``deepspeed=auto`` run in ``cfg`` (idempotent); returns the reason (None if not auto)."""
    ds = cfg.deepspeed
    if not ds.auto:
        return ds.reason
    stage, offload_optimizer, offload_params, reason = decide(cfg)
    ds.stage, ds.offload_optimizer, ds.offload_params = stage, offload_optimizer, offload_params
    ds.auto, ds.reason = False, f"stage {stage}: {reason}"
    log.info("deepspeed=auto -> %s", ds.reason)
    return ds.reason


def explicit_warning(cfg: DictConfig) -> str | None:
    """The warning for a ZeRO stage asked for by name on a single process (honoured, but rarely what pays)."""
    ds, la = cfg.deepspeed, cfg.launcher
    if ds.reason or int(ds.stage) == 0 or int(la.nproc_per_node) * int(la.nnodes) > 1:
        return None
    return (f"deepspeed={ds.name} on one process: ZeRO partitions over a single rank, so it saves no GPU memory "
            f"(offload aside) and ZeRO-3 measured ~{ONE_GPU_SLOWDOWN}x slower; deepspeed=auto picks none when the "
            "model fits")
