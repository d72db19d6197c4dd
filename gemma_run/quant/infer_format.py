"""quant=4bit in an inference run: the 4-bit format its weights load as (``quant.infer_as``).

quant=4bit is bitsandbytes' NF4, QLoRA's format, and training always loads it. An inference run (task=infer,
task=bench, task=plan with plan.mode=infer) on one CUDA GPU loads torchao's int4 instead (groups of 128, tinygemm's
kernels) when ``quant.infer_as=auto`` and the model can take it: at batch 1 a 27B layer's products take 1.8x less
time in tinygemm's int4 than in bitsandbytes' NF4 on the H100 and the H200, for the same greedy tokens as NF4
against the bf16 model (docs/benchmarks.md, "4-bit kernels" and "4-bit quality"). Where int4 cannot run (no GPU, a
model spread over several devices, no torchao, a dtype or layer width tinygemm does not take, an NF4 kernel asked
for), the run stays NF4 and says why. The choice and its reason are logged and in result.json (``quant_loaded``);
``quant.infer_as=keep`` keeps NF4 and ``quant.infer_as=int4`` insists on int4.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict

from gemma_run.app.context import RunContext
from gemma_run.app.errors import GemmaRunError

log = logging.getLogger(__name__)

INT4_GROUP = 128  # quant=int4's default group: the format measured against NF4


@dataclass(frozen=True)
class Choice:
    """The format an inference run's 4-bit weights load as: "int4" (torchao) or "nf4" (bitsandbytes), and why."""

    format: str
    reason: str

    def record(self) -> dict[str, str]:
        return {"format": self.format, "reason": self.reason}


def applies(cfg: DictConfig, mode: str | None) -> bool:
    """Whether ``quant.infer_as`` has anything to choose: an NF4 quant option in a run that infers."""
    q = cfg.quant
    return (mode == "infer" and _value(OmegaConf.select(q, "infer_as", default="keep")) != "keep"
            and _value(q.get("backend")) == "bitsandbytes" and q.get("bits") == 4
            and _value(q.get("quant_type")) == "nf4")


def choose(cfg: DictConfig, mode: str | None, *, cuda: bool | None = None) -> Choice | None:
    """The format for this run, or None when ``quant.infer_as`` does not apply (:func:`applies`).

    ``cuda``: whether the run has CUDA GPUs (default: this machine's; task=plan passes its planned GPUs).
    ``quant.infer_as=int4`` where int4 cannot run is refused with the reason.
    """
    if not applies(cfg, mode):
        return None
    why = _why_not(cfg, cuda)
    if _value(cfg.quant.infer_as) == "int4":
        if why:
            raise GemmaRunError(f"quant.infer_as=int4 cannot load int4 here: {why}", key="quant.infer_as",
                                fix="quant.infer_as=auto (NF4 where int4 cannot run) or quant.infer_as=keep")
        return Choice("int4", "quant.infer_as=int4")
    if why:
        return Choice("nf4", why)
    return Choice("int4", "one CUDA GPU: tinygemm's int4 products run 1.8x as fast as NF4's at batch 1 "
                  "(quant.infer_as=keep keeps NF4)")


def int4_group(quant_cfg: Any) -> DictConfig:
    """quant=int4's group (torchao, groups of INT4_GROUP) with the NF4 group's modules to skip."""
    from gemma_run.schema.quant import TorchAoQuantConfig

    return OmegaConf.structured(TorchAoQuantConfig(name="int4", group_size=INT4_GROUP,
                                                   skip_modules=list(quant_cfg.skip_modules)))


def with_int4(cfg: DictConfig) -> DictConfig:
    """A copy of ``cfg`` whose quant group is :func:`int4_group`'s."""
    copy = cfg.copy()
    _swap(copy)
    return copy


def _swap(cfg: DictConfig) -> None:
    int4 = int4_group(cfg.quant)
    with open_dict(cfg):
        cfg.quant = int4


def _why_not(cfg: DictConfig, cuda: bool | None) -> str | None:
    """Why this run cannot load int4 in place of NF4, or None when it can."""
    kernel = _value(OmegaConf.select(cfg, "generation.kernel_4bit", default="auto"))
    if kernel not in (None, "auto"):
        return f"generation.kernel_4bit={kernel} multiplies NF4 weights"
    dm = cfg.device_map
    strategy = dm.strategy.name
    if strategy in ("cpu", "tp", "explicit") or (strategy == "single" and not str(dm.device).startswith("cuda")):
        return f"device_map={strategy}: int4 is loaded for one CUDA GPU"
    if cfg.quant.cpu_offload:
        return "quant.cpu_offload=true keeps modules on the CPU"
    if cfg.model.dtype not in ("auto", "bfloat16"):
        return f"model.dtype={cfg.model.dtype}: tinygemm's int4 takes bf16 weights"
    if not (cuda if cuda is not None else has_cuda()):
        return "no CUDA GPU with bf16: tinygemm's int4 kernels run on such GPUs"
    from gemma_run.quant.torchao import check_group_size, check_torchao

    try:
        check_torchao()
    except GemmaRunError as e:
        return f"{e.problem} (pip install torchao==0.18.0 for the faster int4)"
    from gemma_run.planning import inputs, skeleton

    int4 = with_int4(cfg)
    try:
        check_group_size(int4.quant, skeleton.build(inputs.model_config(cfg), bool(cfg.model.text_only)))
    except GemmaRunError as e:
        return f"int4 groups of {INT4_GROUP}: {e.problem}"
    return _spread(int4)


def has_cuda() -> bool:
    """Whether this machine has a CUDA GPU with bf16 (tinygemm's int4 kernels take bf16 only)."""
    import torch

    return torch.cuda.is_available() and torch.cuda.is_bf16_supported()


def _spread(cfg: DictConfig) -> str | None:
    """Why the int4 model would not sit whole on one GPU (where the fast engine decodes), or None."""
    from gemma_run.planning import inputs
    from gemma_run.planning.plan import make_plan

    plan = make_plan(inputs.from_cfg(cfg, "infer")[0])
    devices = set((plan.get("device_map") or {}).values())
    if not plan["fits"]:
        return "int4 does not fit this run's devices (the memory plan)"
    if len(devices) != 1 or not next(iter(devices)).isdigit():
        where = ", ".join(d if not d.isdigit() else f"GPU {d}" for d in sorted(devices))
        single = cfg.copy()
        with open_dict(single):
            single.device_map.strategy, single.device_map.device = "single", "cuda:0"
        hint = " (device_map=single puts it on GPU 0, where it fits)" \
            if make_plan(inputs.from_cfg(single, "infer")[0])["fits"] else ""
        return f"the memory plan spreads the model over {where}, and int4 pays off where one GPU decodes{hint}"
    return None


def _value(v: Any) -> Any:
    return getattr(v, "value", v)  # an Enum's value; a plain value as it is


class ChooseFormat:
    """Plugin (before the preflight): load quant=4bit as int4 in an inference run on one CUDA GPU, or say why
    it stays NF4 (:func:`choose`)."""

    def __call__(self, ctx: RunContext) -> None:
        cfg = ctx.cfg
        if not cfg.task.uses_this_machine:
            return
        choice = choose(cfg, OmegaConf.select(cfg, "task.plan_as", default=None))
        if choice is None:
            return
        ctx.result["quant_loaded"] = choice.record()
        if choice.format == "int4":
            _swap(cfg)
            log.info("quant=4bit: loading int4 (torchao, groups of %d) for this inference run: %s", INT4_GROUP,
                     choice.reason)
        else:
            log.info("quant=4bit: loading NF4 (bitsandbytes): %s", choice.reason)
