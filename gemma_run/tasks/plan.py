"""task=plan: what a model needs on each device, before loading it (seconds, no GPU, no download).

    gemma-run task=plan model=gemma3_27b quant=4bit plan.gpus=[24GiB,24GiB,24GiB]
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from gemma_run.app.errors import GemmaRunError


def validate(cfg: DictConfig) -> list[GemmaRunError]:
    from gemma_run.planning.inputs import check

    return check(cfg)


def run(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    from gemma_run.planning import inputs
    from gemma_run.planning.plan import make_plan
    from gemma_run.planning.report import table
    from gemma_run.planning.suggest import suggest
    from gemma_run.quant import infer_format

    mode = str(cfg.plan.mode)
    # quant=4bit planned as the run would load it: int4 for inference on one of the planned GPUs, where it can
    choice = infer_format.choose(cfg, mode, cuda=bool(inputs.gpus(cfg)[0]))
    if choice is not None and choice.format == "int4":
        cfg = infer_format.with_int4(cfg)
    p, note = inputs.from_cfg(cfg, mode)
    plan = make_plan(p)
    plan["suggestion"] = None if plan["fits"] else suggest(p)
    plan["gpus_from"] = note["gpus_from"]
    gpus = ", ".join(f"{g / 2**30:.0f} GiB" for g in p.gpus) or "none (CPU)"
    loaded = f" (quant=4bit loads {choice.format}: {choice.reason})" if choice is not None else ""
    title = (f"plan: {cfg.model.name} {mode}, quant={cfg.quant.name}{loaded}, dtype={p.dtype}, "
             f"device_map={cfg.device_map.name}, GPUs: {gpus} ({note['gpus_from']})")
    print(table(plan, title))
    return {"plan": plan, "params": plan["params"], "bytes_per_device": plan["bytes_per_device"],
            "fits": plan["fits"], "suggestion": plan["suggestion"],
            **({"quant_loaded": choice.record()} if choice is not None else {})}
