"""The doctor's report: a table on the console, report.json and report.md in the run dir."""

from __future__ import annotations

import platform
import sys
import textwrap
from dataclasses import asdict
from pathlib import Path
from typing import Any

from gemma_run.app.context import write_json
from gemma_run.doctor.base import STATUSES, CheckResult

MARK = {"pass": "PASS", "warn": "WARN", "fail": "FAIL", "skip": "skip"}


def overall(results: list[CheckResult]) -> str:
    """fail if any check failed, else warn if any warned, else pass (skips do not count)."""
    statuses = {r.status for r in results}
    return "fail" if "fail" in statuses else "warn" if "warn" in statuses else "pass"


def counts(results: list[CheckResult]) -> dict[str, int]:
    return {s: sum(r.status == s for r in results) for s in STATUSES}


def table(results: list[CheckResult], width: int = 118) -> str:
    """The console table: check, status, seconds, finding (wrapped); then the fixes of what did not pass."""
    name_w = max([len(r.name) for r in results] + [5])
    body_w = max(30, width - name_w - 16)
    lines = [f"{'check':<{name_w}}  {'status':<6}  {'secs':>5}  finding", "-" * width]
    for r in results:
        wrapped = textwrap.wrap(r.finding, body_w) or [""]
        lines.append(f"{r.name:<{name_w}}  {MARK[r.status]:<6}  {r.seconds:>5.1f}  {wrapped[0]}")
        lines.extend(f"{'':<{name_w + 17}}{more}" for more in wrapped[1:])
    fixes = [r for r in results if r.status in ("warn", "fail") and r.fix]
    if fixes:
        lines += ["", "fixes:"]
        lines += [f"  {r.name} [{MARK[r.status]}]: {r.fix}" for r in fixes]
    c = counts(results)
    lines += ["", f"overall: {overall(results).upper()}  ({c['pass']} pass, {c['warn']} warn, {c['fail']} fail, "
              f"{c['skip']} skip)"]
    return "\n".join(lines)


def _md_cell(text: str | None) -> str:
    return (text or "").replace("|", "\\|").replace("\n", " ")


def markdown(results: list[CheckResult], header: dict[str, Any]) -> str:
    c = counts(results)
    lines = [f"# gemma-run environment report: {overall(results).upper()}", "",
             f"{c['pass']} pass, {c['warn']} warn, {c['fail']} fail, {c['skip']} skip. "
             f"Python {header['python']} on {header['platform']}; model `{header['model']}`.", "",
             "| check | status | finding | fix |", "| --- | --- | --- | --- |"]
    for r in results:
        lines.append(f"| `{r.name}` | {MARK[r.status]} | {_md_cell(r.finding)} | "
                     f"{_md_cell(r.fix) if r.status != 'pass' else ''} |")
    lines += ["", "Details of every check (versions, GPUs, errors, tracebacks) are in `report.json`.", ""]
    return "\n".join(lines)


def write(results: list[CheckResult], run_dir: Path, model: str) -> dict[str, Any]:
    """Write report.json and report.md; return the report (what report.json holds)."""
    header = {"python": platform.python_version(), "platform": platform.platform(), "executable": sys.executable,
              "model": model}
    report = {"status": overall(results), "counts": counts(results), **header,
              "checks": [asdict(r) for r in results]}
    write_json(run_dir / "report.json", report)
    md = run_dir / "report.md"
    tmp = md.with_name(".report.md.tmp")
    tmp.write_text(markdown(results, header))
    tmp.replace(md)
    return report
