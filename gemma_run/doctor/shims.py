"""Which compatibility shims are active in this process, and why (gemma_run.shims is the registry)."""

from __future__ import annotations

from gemma_run.doctor.base import DoctorContext, Finding


def shims_check(ctx: DoctorContext) -> Finding:
    """The shims plugin ran before the task: report each shim's state; one needed but not applied fails."""
    from gemma_run.shims import SHIMS

    rows, missing = [], []
    for shim in SHIMS:
        if shim.is_applied():
            rows.append({"name": shim.name, "state": "applied", "why": shim.trigger, "without_it": shim.symptom,
                         "upstream": shim.upstream})
            continue
        reason = shim.needed()
        if reason is not None:
            missing.append(shim.name)
            rows.append({"name": shim.name, "state": "NEEDED, NOT APPLIED", "why": reason,
                         "without_it": shim.symptom, "upstream": shim.upstream})
        else:
            rows.append({"name": shim.name, "state": "not needed", "why": "", "without_it": shim.symptom,
                         "upstream": shim.upstream})
    details = {"shims": rows}
    if missing:
        return Finding("fail", f"needed but not applied: {', '.join(missing)}",
                       fix="keep the shims plugin in the pipeline (do not pass ~plugins.shims)", details=details)
    applied = [r for r in rows if r["state"] == "applied"]
    if applied:
        text = "; ".join(f"{r['name']} applied ({r['why']})" for r in applied)
        return Finding("pass", text, details=details)
    return Finding("pass", f"none needed on this stack ({len(rows)} known: "
                   f"{', '.join(r['name'] for r in rows)})", details=details)


CHECKS = [("shims.applied", shims_check, "which compatibility shims applied and why")]
