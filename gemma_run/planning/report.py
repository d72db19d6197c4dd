"""The plan as a table for the console."""

from __future__ import annotations

from typing import Any

GiB = 2**30


def _g(n: int | None) -> str:
    return "-" if n is None else f"{n / GiB:.2f}"


def _p(n: int) -> str:
    return f"{n / 1e9:.3f} B" if n >= 1e8 else f"{n / 1e6:.2f} M"


def table(plan: dict[str, Any], title: str) -> str:
    lines = [title, ""]
    lines.append("parameters")
    for comp, n in plan["params"].items():
        lines.append(f"  {comp:<22}{_p(n):>14}")
    if plan.get("moe"):
        lines.append(f"  {'active per token':<22}{_p(plan['active_params']):>14}  "
                     f"({plan['moe']['top_k']} of {plan['moe']['experts']} experts)")
    if "trainable_params" in plan:
        lines.append(f"  {'trainable':<22}{_p(plan['trainable_params']):>14}")
    lines.append("")
    lines.append("weights (GiB)  " + "  ".join(f"{k} {_g(v)}" for k, v in plan["weights_bytes_by_dtype"].items()))
    if plan["mode"] == "infer":
        types = ", ".join(f"{n} {t.removesuffix('_attention')}" for t, n in plan["layer_types"].items())
        window = f", window {plan['sliding_window']}" if plan.get("sliding_window") else ""
        if plan.get("kv_shared_layers"):
            window += f"; {plan['kv_shared_layers']} reuse another layer's KV"
        lines.append(f"KV cache       {_g(plan['kv_cache_bytes'])} GiB for {plan['batch']} x {plan['context']} tokens "
                     f"({types} layers{window})")
    else:
        s = plan["training_state_bytes"]
        lines.append(f"train state    adapter {_g(s['adapter'])}  grads {_g(s['gradients'])}  "
                     f"optimizer {_g(s['optimizer'])}  on CPU {_g(s['cpu'])} GiB per rank "
                     f"(ZeRO-{plan['zero_stage']}, {plan['world']} rank(s), seq {plan['context']} x {plan['batch']})")
    lines.append("")
    cols = [c for c in ("weights", "kv_cache", "training_state", "activations", "overhead", "random_build")
            if any(c in d for d in plan["devices"].values())]
    head = f"{'device':<8}" + "".join(f"{c:>15}" for c in cols) + f"{'total':>10}{'capacity':>10}  holds"
    lines.append(head)
    for dev, d in plan["devices"].items():
        holds = plan.get("placement", {}).get(dev, "")
        lines.append(f"{dev:<8}" + "".join(f"{_g(d.get(c, 0)):>15}" for c in cols)
                     + f"{_g(d['total']):>10}{_g(d.get('capacity')):>10}  {holds}")
    lines.append("")
    lines.append("fits: yes" if plan["fits"] else "fits: NO")
    if plan.get("offloaded_weights_bytes"):
        lines.append(f"  note: {_g(plan['offloaded_weights_bytes'])} GiB of weights offloaded to CPU/disk: it runs, "
                     "but every token waits for them")
    for problem in plan["problems"]:
        lines.append(f"  - {problem}")
    for s in plan.get("suggestion") or []:
        lines.append(f"  try: {s}")
    return "\n".join(lines)
