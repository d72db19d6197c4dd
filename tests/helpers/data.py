"""Data files a test writes: JSON lines, and the small alpaca set the training tests share."""

from __future__ import annotations

import json
import random
from pathlib import Path

WORDS = "the quick brown fox jumps over the lazy dog a model runs on the GPUs you have".split()


def write_jsonl(path: Path, rows: list) -> Path:
    """One line per row: a dict as JSON, a str as it is (to write a broken line on purpose)."""
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def alpaca_rows(n: int = 32, seed: int = 0) -> list[dict]:
    """Alpaca records (instruction, input, output) of random words, the same for a given seed."""
    rnd = random.Random(seed)
    return [{"instruction": f"Count to {i % 5 + 1}", "input": "" if i % 2 else "slowly",
             "output": " ".join(rnd.choices(WORDS, k=6))} for i in range(n)]
