"""The preflight plugin: plan infer and train runs before loading anything; refuse one that cannot fit.

Runs after env/shims (order 30) and before the task. It plans on the GPUs found (or those in ``plan.gpus``);
with no GPU and no ``plan.gpus`` it checks CPU memory. ``plan.preflight=false`` turns it off.
"""

from __future__ import annotations

import logging

from omegaconf import OmegaConf

from gemma_run.app.context import RunContext
from gemma_run.app.errors import GemmaRunError

log = logging.getLogger(__name__)

class Preflight:
    """Refuse, before loading, a run whose plan does not fit, naming the plan's suggestion."""

    def __call__(self, ctx: RunContext) -> None:
        cfg = ctx.cfg
        mode = OmegaConf.select(cfg, "task.plan_as", default=None)  # the task's schema says what to plan
        if mode is None or not OmegaConf.select(cfg, "plan.preflight", default=True):
            return
        from gemma_run.planning import inputs
        from gemma_run.planning.plan import make_plan
        from gemma_run.planning.suggest import explain, suggest

        if mode == "train":  # deepspeed=auto picks its stage from the plan: before planning the run itself
            from gemma_run.training.zero_choice import resolve

            ctx.result["deepspeed_choice"] = resolve(cfg)
        p, note = inputs.from_cfg(cfg, mode)
        plan = make_plan(p)
        per_device = ", ".join(f"{d} {_size(b)}" for d, b in plan["bytes_per_device"].items())
        ctx.result["preflight"] = {"fits": plan["fits"], "bytes_per_device": plan["bytes_per_device"], **note}
        if plan["fits"]:
            log.info("preflight: fits (%s; GPUs %s)", per_device, note["gpus_from"])
            return
        suggestions = suggest(p)
        ctx.result["preflight"]["suggestion"] = suggestions
        raise GemmaRunError(f"preflight: {cfg.model.name} ({mode}, quant={cfg.quant.name}) "
                            + explain(plan, suggestions), key="plan",
                            fix=(f"{suggestions[0]}; " if suggestions else "")
                            + "see `gemma-run task=plan ...` for the whole plan; plan.preflight=false skips this check")


def _size(n: int) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"
