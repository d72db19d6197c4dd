"""The environment variables in effect (after the env plugin exported the env group), secrets redacted."""

from __future__ import annotations

from gemma_run.app import env
from gemma_run.doctor.base import DoctorContext, Finding

# Values that silently change what runs, with the fix.
_TRAPS = {
    "CUDA_VISIBLE_DEVICES": (lambda v: v.strip() in ("", "-1"),
                             "hides every GPU", "unset CUDA_VISIBLE_DEVICES, or list the GPUs: 0,1"),
    "OMP_NUM_THREADS": (lambda v: v.strip() == "0", "is invalid (torch wants >= 1)", "OMP_NUM_THREADS=1 or unset it"),
}


def env_check(ctx: DoctorContext) -> Finding:
    shown = env.snapshot()
    warnings, fixes = [], []
    for name, (bad, why, fix) in _TRAPS.items():
        value = env.get(name)
        if value is not None and bad(value):
            warnings.append(f"{name}={value!r} {why}")
            fixes.append(fix)
    exported = list(ctx.cfg.env.vars.keys())
    details = {"in_effect": shown, "env_group": ctx.cfg.env.name, "exported_by_env_group": exported}
    listing = ", ".join(f"{k}={v}" for k, v in shown.items())
    if len(listing) > 100:
        listing = listing[:97] + "..."
    text = f"{len(shown)} relevant variable(s) (env={ctx.cfg.env.name}): {listing or 'none'}"
    if warnings:
        return Finding("warn", "; ".join(warnings) + f" | {text}", fix="; ".join(fixes), details=details)
    return Finding("pass", text, details=details)


CHECKS = [("env.vars", env_check, "the env vars in effect, redacted")]
