"""Every patch to another library gemma-run knows (gemma_run.patches is the registry): its phase, whether its
trigger holds on this stack, and whether it is applied."""

from __future__ import annotations

from gemma_run.doctor.base import DoctorContext, Finding


def shims_check(ctx: DoctorContext) -> Finding:
    """The shims plugin applied the process-start patches before the task: one needed there but not applied
    fails; the later phases' patches are listed with whether their trigger holds here."""
    from gemma_run.patches import registry

    rows = registry.report()
    for row in rows:
        row["state"] = "applied" if row["applied"] else "not needed" if row["trigger_holds"] is False else \
            "NEEDED, NOT APPLIED" if row["phase"] == "process_start" else f"trigger holds, applied at {row['phase']}" \
            if row["trigger_holds"] else "unknown"
    missing = [r["name"] for r in rows if r["state"] == "NEEDED, NOT APPLIED"]
    details = {"shims": rows}
    if missing:
        return Finding("fail", f"needed but not applied: {', '.join(missing)}",
                       fix="keep the shims plugin in the pipeline (do not pass ~plugins.shims)", details=details)
    applied = [r for r in rows if r["applied"]]
    listed = f"{len(rows)} known: " + ", ".join(f"{r['name']} ({r['phase']}, {r['state']})" for r in rows)
    if applied:
        text = "; ".join(f"{r['name']} applied ({r['trigger']})" for r in applied)
        return Finding("pass", f"{text}; {listed}", details=details)
    return Finding("pass", f"none applied on this stack ({listed})", details=details)


CHECKS = [("shims.applied", shims_check, "every patch to another library: phase, trigger on this stack, applied")]
