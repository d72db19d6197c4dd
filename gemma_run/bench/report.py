"""The short table task=bench prints: one line per (prompt, new tokens, batch) combination."""

from __future__ import annotations

from typing import Any

COLUMNS = (  # header, row key, format
    ("prompt", "prompt_tokens", "{:d}"),
    ("new", "new_tokens", "{:d}"),
    ("batch", "batch", "{:d}"),
    ("ttft s", "time_to_first_token_s", "{:.3f}"),
    ("decode tok/s", "decode_tokens_per_second", "{:.1f}"),
    ("x batch", "decode_throughput", "{:.1f}"),
    ("total tok/s", "total_tokens_per_second", "{:.1f}"),
    ("limit tok/s", "limit_tokens_per_second", "{:.1f}"),
    ("of limit", "limit_fraction", "{:.1%}"),
    ("MB/step", "bytes_per_step", "{:.4g}"),
    ("warm-up s", "warmup_seconds", "{:.1f}"),
)


def _cell(row: dict[str, Any], key: str, fmt: str) -> str:
    value = row.get(key)
    if value is None:
        return "-"
    return fmt.format(value / 1e6 if key == "bytes_per_step" else value)


def table(rows: list[dict[str, Any]], title: str) -> str:
    cells = [[_cell(r, key, fmt) for _, key, fmt in COLUMNS] for r in rows]
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, (h, _, _) in enumerate(COLUMNS)]
    lines = [title, "  ".join(h.rjust(w) for (h, _, _), w in zip(COLUMNS, widths, strict=True))]
    lines += ["  ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)) for row in cells]
    return "\n".join(lines)
