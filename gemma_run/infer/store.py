"""generations.jsonl: each result appended (and flushed to the OS) as soon as its batch finishes, so a run
killed at any moment keeps every finished prompt; a run restarted in the same dir (``resume=...``) skips them.

Batches are grouped by prompt length, so lines are appended in completion order; when the run ends the file
is rewritten (atomically) in input order. A line cut short by the kill is dropped on resume and its prompt
generated again; every prompt ends up in the file exactly once.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from gemma_run.app.errors import GemmaRunError
from gemma_run.infer.prompts import PromptItem

log = logging.getLogger(__name__)

FILENAME = "generations.jsonl"
_INPUT_KEYS = ("id", "prompt", "messages", "image")  # what must match for a done line to count on resume


class GenerationsFile:
    def __init__(self, run_dir: Path) -> None:
        self.path = Path(run_dir) / FILENAME
        self.done: dict[int, dict[str, Any]] = {}

    def load(self) -> dict[int, dict[str, Any]]:
        """The finished results already in the file, by index. A torn last line is cut off the file."""
        if not self.path.is_file():
            return self.done
        raw = self.path.read_bytes()
        good_end = 0
        lines = raw.split(b"\n")
        for lineno, line in enumerate(lines, start=1):
            complete = lineno < len(lines)  # the piece after the last newline was never finished
            if not line.strip():
                good_end += len(line) + (1 if complete else 0)
                continue
            try:
                record = json.loads(line) if complete else None
            except json.JSONDecodeError:
                record = None
            if record is None or not isinstance(record, dict) or not isinstance(record.get("index"), int):
                if lineno >= len(lines) - 1:  # the last line: the write the kill interrupted
                    log.warning("%s:%d: dropping an incomplete line (the run was interrupted while writing it); "
                                "its prompt is generated again", self.path, lineno)
                    break
                raise GemmaRunError(f"{self.path}:{lineno} is not a generations line (corrupted file?)",
                                    key=f"{self.path}:{lineno}",
                                    fix="delete that line (its prompt is then generated again), or start a new run "
                                        "dir without resume=")
            self.done[record["index"]] = record
            good_end += len(line) + 1
        if good_end < len(raw):
            with open(self.path, "r+b") as f:
                f.truncate(good_end)
        return self.done

    def check_matches(self, items: list[PromptItem]) -> None:
        """Resume only with the same prompts: a done line must be the same input as the item at its index."""
        for index, record in sorted(self.done.items()):
            expected = items[index].record() if index < len(items) else None
            if expected is None or any(record.get(k) != expected.get(k) for k in _INPUT_KEYS):
                where = items[index].source if expected is not None else f"index {index}"
                raise GemmaRunError(
                    f"{self.path} was written for other prompts (line for index {index} does not match {where})",
                    key="resume", fix="resume with the same prompt/prompts_file as the interrupted run, or drop "
                                      "resume= to start a new run dir")

    def append(self, records: list[dict[str, Any]]) -> None:
        """Append finished results and push them to the OS at once (a SIGKILL then loses nothing)."""
        with open(self.path, "a", encoding="utf-8") as f:
            for record in records:
                f.write(json.dumps(record, ensure_ascii=False) + "\n")
            f.flush()
            os.fsync(f.fileno())
        for record in records:
            self.done[record["index"]] = record

    def finalize(self) -> None:
        """Rewrite the file in input order (atomic: the old file stays whole until the new one replaces it)."""
        if not self.path.is_file():
            return
        ordered = [self.done[i] for i in sorted(self.done)]
        current = [json.loads(line) for line in self.path.read_text(encoding="utf-8").splitlines() if line.strip()]
        if current == ordered:
            return
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            for record in ordered:
                f.write(json.dumps(record, ensure_ascii=False) + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)
