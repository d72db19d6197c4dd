"""DeepSpeed's accelerator, and which of its C++/CUDA ops are built (installed) or can be built here (JIT)."""

from __future__ import annotations

import contextlib
import io
from typing import Any

from gemma_run.doctor.base import DoctorContext, Finding, gpu_count

# The ops gemma-run's deepspeed configs use: ZeRO's CPU optimizer offload (cpu_adam) on any machine, and the
# fused GPU Adam on CUDA (without it DeepSpeed falls back to torch's Adam, slower but correct).
NEEDED = {"cpu": ["cpu_adam"], "cuda": ["cpu_adam", "fused_adam"]}


def _import_deepspeed() -> tuple[Any, Finding | None]:
    from gemma_run.doctor.versions import installed

    version = installed("deepspeed")
    if version is None:
        return None, Finding("warn", "deepspeed is not installed: the deepspeed group (ZeRO) cannot run",
                             fix="pip install 'gemma-run[deepspeed]' (DS_BUILD_CPU_ADAM=1 prebuilds the CPU "
                                 "optimizer; see docs/train.md)")
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # it prints its accelerator choice
            import deepspeed
    except Exception as e:  # a broken build raises anything from ImportError to RuntimeError
        return None, Finding("fail", f"deepspeed {version} does not import: {type(e).__name__}: "
                             f"{str(e).splitlines()[0] if str(e) else ''}",
                             fix="pip install --force-reinstall --no-build-isolation deepspeed (after torch)")
    return deepspeed, None


def accelerator_check(ctx: DoctorContext) -> Finding:
    ds, problem = _import_deepspeed()
    if problem:
        return problem
    from deepspeed.accelerator import get_accelerator

    acc = get_accelerator()
    name, backend = acc._name, acc.communication_backend_name()
    details = {"deepspeed": ds.__version__, "accelerator": name, "device_name": acc.device_name(),
               "communication_backend": backend, "device_count": acc.device_count()}
    n = gpu_count()
    if n and name != "cuda":
        return Finding("warn", f"deepspeed {ds.__version__} chose the {name} accelerator although {n} CUDA GPU(s) "
                       "are visible", fix="+env.vars.DS_ACCELERATOR=cuda (or unset DS_ACCELERATOR)", details=details)
    return Finding("pass", f"deepspeed {ds.__version__}: accelerator {name} ({acc.device_count()} device(s)), "
                   f"communication backend {backend}", details=details)


def ops_check(ctx: DoctorContext) -> Finding:
    _ds, problem = _import_deepspeed()
    if problem:
        return problem
    import torch
    from deepspeed.accelerator import get_accelerator
    from deepspeed.git_version_info import accelerator_name, installed_ops, torch_info
    from deepspeed.ops.op_builder.all_ops import ALL_OPS
    from torch.utils.cpp_extension import is_ninja_available

    runtime = get_accelerator()._name
    same_accelerator = accelerator_name == runtime
    ops: dict[str, dict[str, bool]] = {}
    for op, builder in ALL_OPS.items():
        if op == "deepspeed_not_implemented":  # a placeholder builder, not an op
            continue
        with contextlib.redirect_stdout(io.StringIO()):
            try:
                compatible = bool(builder.is_compatible(False))
            except Exception:  # DeepSpeed's own report treats a failing probe as "not compatible"
                compatible = False
        ops[op] = {"installed": bool(installed_ops.get(op)) and same_accelerator, "compatible": compatible}
    ninja = is_ninja_available()
    built = sorted(op for op, s in ops.items() if s["installed"])
    jit = sorted(op for op, s in ops.items() if not s["installed"] and s["compatible"])
    details = {"accelerator": runtime, "built_for": accelerator_name, "built_with_torch": torch_info.get("version"),
               "ninja": ninja, "ops": ops}
    problems, fixes = [], []
    torch_mm = ".".join(torch.__version__.split(".")[:2])
    if built and str(torch_info.get("version")) not in ("0.0", torch_mm):
        problems.append(f"ops were built with torch {torch_info.get('version')}, this is torch {torch_mm}")
        fixes.append("reinstall deepspeed after torch (pip install --force-reinstall --no-build-isolation deepspeed)")
    for op in NEEDED.get(runtime, []):
        state = ops.get(op)
        if state is None or state["installed"]:
            continue
        if not (state["compatible"] and ninja):
            why = "not compatible" if not state["compatible"] else "ninja missing for the JIT build"
            problems.append(f"{op} is neither built nor buildable here ({why})")
            fixes.append(f"DS_BUILD_{op.upper()}=1 pip install --no-build-isolation deepspeed, or pip install ninja")
    text = (f"{runtime}: built {', '.join(built) or 'none'}; JIT-buildable {len(jit)} "
            f"({', '.join(jit[:4])}{', ...' if len(jit) > 4 else ''}); ninja {'yes' if ninja else 'no'}")
    if problems:
        return Finding("warn", "; ".join(problems) + f" | {text}", fix="; ".join(fixes), details=details)
    return Finding("pass", text, details=details)


CHECKS = [
    ("deepspeed.accelerator", accelerator_check, "DeepSpeed imports and picks the right accelerator"),
    ("deepspeed.ops", ops_check, "which DeepSpeed ops are built or JIT-buildable"),
]
