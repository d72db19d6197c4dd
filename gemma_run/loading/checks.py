"""Checks of where a model will go, before any weight is read: devices that exist, a map that covers the model,
offload that can work with the quantization. Used by :func:`gemma_run.loading.load` and, earlier in the
pipeline, by the ``device_map_check`` plugin (order 25, before the preflight memory plan), so a map naming a
missing GPU is reported as exactly that, not as a memory shortfall."""

from __future__ import annotations

from typing import Any

from gemma_run import quant
from gemma_run.app.context import RunContext
from gemma_run.loading import architecture, placement


def device_map_kwargs(cfg: Any, path: Any = None, plan: Any = None) -> dict[str, Any]:
    """from_pretrained's device_map / max_memory / offload kwargs for ``cfg``, checked.

    ``path``/``plan`` (the resolved checkpoint and its class plan) are found when not given; they are needed
    only to check the coverage of an explicit map.
    """
    kwargs = placement.build(cfg.device_map)
    kwargs["device_map"] = placement.planned(cfg) or kwargs["device_map"]
    placement.check_devices(kwargs["device_map"], kwargs.get("max_memory"))
    placement.check_offload(kwargs["device_map"], kwargs.get("offload_folder"), quant.from_cfg(cfg.quant).quantized)
    if cfg.device_map.strategy.name == "explicit":
        if path is None:
            from gemma_run.loading import checkpoint

            path = checkpoint.resolve(cfg.model, cfg.cache_dir)
        if plan is None:
            plan = architecture.plan(path, cfg.model.text_only, cfg.model.trust_remote_code)
        placement.check_coverage(kwargs["device_map"], architecture.skeleton(path, plan, cfg.model.trust_remote_code))
    return kwargs


class CheckDeviceMap:
    """Plugin: refuse a device map that cannot work (missing device, unmapped modules, disk offload without a
    folder or with bitsandbytes) before the memory plan and the load. Only maps that name devices or modules
    (single, explicit, max_memory, offload) have anything to check."""

    def __call__(self, ctx: RunContext) -> None:
        if not ctx.cfg.task.uses_this_machine:
            return
        dm = ctx.cfg.device_map
        if dm.strategy.name in ("single", "explicit") or dm.max_memory or dm.offload_folder:
            device_map_kwargs(ctx.cfg)
