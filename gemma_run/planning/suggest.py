"""When a plan does not fit: try the usual changes, re-plan each, and name the ones that fit.

Each candidate is a what-if on the plan's inputs, given as the command-line overrides that make it, tried in
the order a user would prefer them (cheapest change first). Only candidates whose own plan fits are offered.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from gemma_run.app.errors import GemmaRunError
from gemma_run.planning.memory import Quant
from gemma_run.planning.plan import PlanInputs, make_plan, with_changes

GiB = 2**30


def _halvings(value: int, floor: int) -> Iterator[int]:
    """value // 2, // 4, ... while the previous value was above ``floor`` (the sizes a suggestion tries)."""
    while value > floor:
        value //= 2
        yield value


def _candidates(p: PlanInputs) -> list[tuple[str, Callable[[], PlanInputs]]]:
    out: list[tuple[str, Callable[[], PlanInputs]]] = []
    q = p.quant
    t = p.train
    if p.mode == "train":
        if not t.lora:
            out.append(("lora.enabled=true", lambda: with_changes(p, train_lora=True)))
        if not t.gradient_checkpointing:
            out.append(("train.gradient_checkpointing=true",
                        lambda: with_changes(p, train_gradient_checkpointing=True)))
    if q.mode == "none":
        out.append(("quant=8bit", lambda: with_changes(p, quant=Quant("int8"))))
    if q.mode in ("none", "int8"):
        out.append(("quant=4bit", lambda: with_changes(p, quant=Quant("nf4", True))))
    if p.mode == "train":
        for b in _halvings(t.batch, 1):
            out.append((f"train.per_device_batch_size={b}", lambda b=b: with_changes(p, train_batch=b)))
        for s in _halvings(t.seq_len, 512):
            out.append((f"train.max_seq_length={s}", lambda s=s: with_changes(p, train_seq_len=s)))
        n = max(len(p.gpus), 1)
        if n > 1 and t.zero_stage < 3:
            out.append((f"deepspeed=zero3 launcher.nproc_per_node={n}",
                        lambda: with_changes(p, train_zero_stage=3, train_world=n)))
        out.append((f"deepspeed=zero3_offload launcher.nproc_per_node={n}",
                    lambda: with_changes(p, train_zero_stage=3, train_world=n, train_offload_optimizer=True,
                                         train_offload_params=True)))
    else:
        for b in _halvings(p.batch, 1):
            out.append((f"batch_size={b}", lambda b=b: with_changes(p, batch=b)))
        for c in _halvings(p.new_tokens, 256):
            out.append((f"generation.max_new_tokens={c}", lambda c=c: with_changes(p, new_tokens=c)))
        if p.strategy in ("single", "balanced_low_0") and len(p.gpus) > 1:
            out.append(("device_map=auto", lambda: with_changes(p, strategy="auto")))
    if p.gpus:
        size = max(p.gpus)
        for extra in range(1, 9):
            n = len(p.gpus) + extra
            label = f"{n} GPUs of {size / GiB:.0f} GiB: plan.gpus=[{','.join([f'{size / GiB:.0f}GiB'] * n)}]"
            if p.mode == "train" and (t.world > 1 or t.zero_stage):
                out.append((label + f" launcher.nproc_per_node={n}",
                            lambda n=n: with_changes(p, gpus=(size,) * n, train_world=n)))
            else:
                out.append((label, lambda n=n: with_changes(p, gpus=(size,) * n)))
    return out


def suggest(p: PlanInputs, limit: int = 3) -> list[str]:
    """Up to ``limit`` overrides, each of which alone makes the plan fit (the first is the one to try)."""
    found: list[str] = []
    more_gpus_found = False
    for label, make in _candidates(p):
        is_more = " GPUs of " in label
        if is_more and more_gpus_found:
            continue
        try:
            fits = make_plan(make())["fits"]
        except GemmaRunError:
            continue
        if fits:
            found.append(label)
            more_gpus_found = more_gpus_found or is_more
            if len(found) >= limit:
                break
    return found


def explain(plan: dict[str, Any], suggestions: list[str]) -> str:
    """One paragraph: why it does not fit and what to do."""
    why = "; ".join(plan["problems"])
    if not suggestions:
        return f"does not fit: {why}. No single change found that fits; combine them (quant=4bit, more GPUs, " \
               "shorter context, deepspeed=zero3_offload)."
    return f"does not fit: {why}. Try: {suggestions[0]}" + (
        f" (or: {'; '.join(suggestions[1:])})" if len(suggestions) > 1 else "")
