"""One table for a whole sweep: each job's swept overrides, status and key results, as markdown, CSV and a plot.

Written by the SweepSummary callback at the end of `gemma-run -m ...` into the multirun dir; it reads only what
the jobs left on disk (.hydra/overrides.yaml and result.json), so it works the same for every launcher (basic,
joblib, submitit) and keeps every job that finished when others failed.
"""

from __future__ import annotations

import csv
import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

# The result.json keys shown when present, in this order (nested keys with dots).
DEFAULT_METRICS = ("tokens_per_second", "decode_tokens_per_second", "decode_throughput", "limit_fraction",
                   "time_to_first_token_s", "peak_memory_bytes", "train_loss", "eval_loss",
                   "fits", "load_seconds", "seconds")


@dataclass
class JobRow:
    num: int
    overrides: dict[str, str]
    status: str
    metrics: dict[str, Any] = field(default_factory=dict)
    error: str = ""


def _flat(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def collect(sweep_dir: Path, swept_keys: list[str] | None = None) -> list[JobRow]:
    """A row per job dir (0, 1, ...) under ``sweep_dir``."""
    rows = []
    jobs = sorted((p for p in sweep_dir.iterdir() if p.is_dir() and p.name.isdigit()), key=lambda p: int(p.name))
    for job in jobs:
        overrides_file = job / ".hydra" / "overrides.yaml"
        pairs = [str(o).split("=", 1) for o in OmegaConf.load(overrides_file)] if overrides_file.is_file() else []
        overrides = {k.lstrip("+~"): v for k, v in (p for p in pairs if len(p) == 2)}
        if swept_keys:
            overrides = {k: v for k, v in overrides.items() if k in swept_keys}
        result_file = job / "result.json"
        if not result_file.is_file():
            rows.append(JobRow(int(job.name), overrides, "no result", error="the job left no result.json (killed?)"))
            continue
        result = json.loads(result_file.read_text())
        rows.append(JobRow(int(job.name), overrides, str(result.get("status", "?")), _flat(result),
                           str(result.get("error", "")).splitlines()[0] if result.get("error") else ""))
    return rows


def _columns(rows: list[JobRow], metrics: list[str]) -> list[str]:
    return [m for m in metrics if any(m in r.metrics for r in rows)]


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "" if value is None else str(value)


def write(sweep_dir: Path, rows: list[JobRow], metrics: list[str], plot_metric: str | None) -> dict[str, Path]:
    """summary.md, summary.csv and (when a numeric metric exists) summary.png in ``sweep_dir``."""
    keys = sorted({k for r in rows for k in r.overrides})
    cols = _columns(rows, metrics)
    header = ["job", *keys, "status", *cols, "error"]
    table = [[str(r.num), *(r.overrides.get(k, "") for k in keys), r.status,
              *(_fmt(r.metrics.get(c)) for c in cols), r.error] for r in rows]
    written = {}
    with open(sweep_dir / "summary.csv", "w", newline="") as f:
        csv.writer(f).writerows([header, *table])
    written["csv"] = sweep_dir / "summary.csv"
    failed = sum(r.status != "ok" for r in rows)
    lines = [f"# Sweep summary: {len(rows)} jobs, {len(rows) - failed} ok, {failed} failed", "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in table]
    (sweep_dir / "summary.md").write_text("\n".join(lines) + "\n")
    written["md"] = sweep_dir / "summary.md"
    metric = plot_metric or next((c for c in cols if _numeric(rows, c)), None)
    if metric and _numeric(rows, metric):
        png = _plot(sweep_dir / "summary.png", rows, keys, metric)
        if png is not None:
            written["png"] = png
    return written


def _numeric(rows: list[JobRow], metric: str) -> bool:
    return any(isinstance(r.metrics.get(metric), int | float) and not isinstance(r.metrics.get(metric), bool)
               for r in rows)


def _plot(path: Path, rows: list[JobRow], keys: list[str], metric: str) -> Path | None:
    """The bar chart; None (and one warning saying how to get it) when matplotlib is not installed."""
    try:
        import matplotlib
    except ImportError:
        logging.getLogger("gemma_run").warning(
            "sweep summary: %s not drawn: matplotlib is not installed (pip install 'gemma-run[sweep]', or pip "
            "install matplotlib); summary.md and summary.csv are written", path.name)
        return None

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [", ".join(f"{k}={r.overrides.get(k, '')}" for k in keys) or f"job {r.num}" for r in rows]
    values = [r.metrics.get(metric) if r.status == "ok" else None for r in rows]
    heights = [v if isinstance(v, int | float) and not (isinstance(v, float) and math.isnan(v)) else 0
               for v in values]
    fig, ax = plt.subplots(figsize=(max(6.0, 0.9 * len(rows) + 2), 4.5))
    bars = ax.bar(range(len(rows)), heights, color=["tab:blue" if v is not None else "tab:red" for v in values])
    for bar, value in zip(bars, values, strict=True):
        ax.annotate("failed" if value is None else _fmt(value), (bar.get_x() + bar.get_width() / 2,
                    bar.get_height()), ha="center", va="bottom", fontsize=8)
    ax.set_xticks(range(len(rows)), labels, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel(metric)
    ax.set_title(f"{metric} by {', '.join(keys) or 'job'}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
