"""Synthetic prompts of an exact token length, from the model's own tokenizer, the same on every run."""

from __future__ import annotations

from typing import Any

TEXT = ("The quick brown fox jumps over the lazy dog while the committee reviews the quarterly report on "
        "memory bandwidth, kernel launches and the cost of reading every weight once per generated token. ")


def token_ids(tokenizer: Any, length: int, batch: int) -> list[list[int]]:
    """``batch`` rows of exactly ``length`` ids: the tokenizer's BOS (when it adds one) and then a fixed English
    text tokenized and repeated, each row starting at a different place in it, so no row needs padding and the
    rows are not copies of one another."""
    body = tokenizer(TEXT, add_special_tokens=False)["input_ids"]
    head = tokenizer("", add_special_tokens=True)["input_ids"][:1]  # BOS, or nothing
    need = length - len(head)
    rows = []
    for row in range(batch):
        start = (row * 7) % len(body)
        repeated = (body * (need // len(body) + 2))[start:start + need]
        rows.append(head + repeated)
    return rows
