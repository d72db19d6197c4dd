"""Read training records from a local file or a saved datasets dir and check every one before training.

A bad record is reported by file and line (JSONL), or by file and record index (JSON, Parquet, datasets dir),
with the field it misses, so a day of GPU time is never spent before the tokenizer trips on line 40,312.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gemma_run.app.errors import GemmaRunError
from gemma_run.chat import sharegpt

SUFFIXES = (".jsonl", ".json", ".parquet")
ROLES = ("system", "user", "assistant")


@dataclass
class Record:
    data: dict[str, Any]
    where: str  # "file:line" or "file[row]": how errors name it


def read(path_str: str | None, key: str) -> list[Record]:
    """Every record of ``path_str`` (the value of config key ``key``), in file order."""
    if not path_str:
        raise GemmaRunError(f"{key} is not set: task=train needs training data", key=key,
                            fix=f"{key}=/path/to/train.jsonl (alpaca, chat or text records, see docs/train.md)")
    path = Path(path_str).expanduser()
    if not path.exists():
        raise GemmaRunError(f"{key}: {path} does not exist", key=key, fix="check the path (relative paths are "
                            "taken from the directory you run gemma-run in)")
    if path.is_dir():
        records = _saved_dataset(path, key)
    elif path.suffix == ".jsonl":
        records = _jsonl(path)
    elif path.suffix == ".json":
        records = _json(path)
    elif path.suffix == ".parquet":
        records = _parquet(path)
    else:
        raise GemmaRunError(f"{key}: {path.name} is not one of {', '.join(SUFFIXES)} or a saved datasets dir",
                            key=key, fix="convert it to JSONL (one JSON object per line)")
    if not records:
        raise GemmaRunError(f"{key}: {path} has no records", key=key,
                            fix="put at least one record in it, e.g. {\"text\": \"...\"} per line")
    return records


def _jsonl(path: Path) -> list[Record]:
    records = []
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                data = json.loads(line)
            except json.JSONDecodeError as e:
                raise GemmaRunError(f"{where}: not valid JSON ({e.msg} at column {e.colno})", key=where,
                                    fix="each line must be one complete JSON object; fix or remove that line") \
                    from None
            records.append(Record(_object(data, where), where))
    return records


def _json(path: Path) -> list[Record]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        where = f"{path}:{e.lineno}"
        raise GemmaRunError(f"{where}: not valid JSON ({e.msg} at column {e.colno})", key=where,
                            fix="fix the JSON there (or write one object per line as .jsonl)") from None
    if not isinstance(data, list):
        raise GemmaRunError(f"{path}: a .json train file must hold a list of records, found {type(data).__name__}",
                            key=str(path), fix="[{...}, {...}], or one object per line as .jsonl")
    return [Record(_object(item, f"{path}[{i}]"), f"{path}[{i}]") for i, item in enumerate(data)]


def _parquet(path: Path) -> list[Record]:
    import pyarrow.parquet as pq

    try:
        rows = pq.read_table(path).to_pylist()
    except Exception as e:  # pyarrow raises several types for a damaged file
        raise GemmaRunError(f"{path}: cannot read it as Parquet: {e}", key=str(path),
                            fix="write it again with pandas/pyarrow/datasets, or use JSONL") from e
    return [Record(row, f"{path}[{i}]") for i, row in enumerate(rows)]


def _saved_dataset(path: Path, key: str) -> list[Record]:
    from datasets import DatasetDict, load_from_disk

    try:
        ds = load_from_disk(str(path))
    except FileNotFoundError as e:
        raise GemmaRunError(f"{key}: {path} is a directory but not one written by datasets' save_to_disk",
                            key=key, fix="point it at a .jsonl/.json/.parquet file or a save_to_disk dir") from e
    if isinstance(ds, DatasetDict):
        if "train" not in ds:
            raise GemmaRunError(f"{path} holds splits {list(ds)} but no 'train'", key=key,
                                fix="save the training split alone, or name it 'train'")
        ds = ds["train"]
    return [Record(row, f"{path}[{i}]") for i, row in enumerate(ds)]


def _object(data: Any, where: str) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise GemmaRunError(f"{where}: a record must be a JSON object, found {type(data).__name__}", key=where,
                            fix='{"instruction": ..., "output": ...}, {"messages": [...]} or {"text": ...}')
    return data


def detect_format(first: Record) -> str:
    """data.format=auto: the format of the first record (all the others are then checked against it)."""
    keys = set(first.data)
    if "messages" in keys:
        return "chat"
    if sharegpt.FIELD in keys:
        return "sharegpt"
    if {"instruction", "output"} <= keys:
        return "alpaca"
    if "text" in keys:
        return "text"
    raise GemmaRunError(f"{first.where}: cannot tell the data format from the fields {sorted(keys)}",
                        key="data.format", fix="records need messages (chat), conversations (sharegpt), "
                        "instruction+output (alpaca) or text; or set data.format=alpaca|chat|sharegpt|text")


def check(records: list[Record], fmt: str) -> None:
    """Raise on the first record that does not fit ``fmt``, naming it and the field."""
    for rec in records:
        problem = _problem(rec.data, fmt)
        if problem:
            raise GemmaRunError(f"{rec.where}: {problem} (data.format={fmt})", key=rec.where,
                                fix=_FIX[fmt])


def normalize(records: list[Record], fmt: str) -> None:
    """ShareGPT records (already checked) become chat records, so they train exactly as chat does."""
    if fmt == "sharegpt":
        for rec in records:
            rec.data = {"messages": sharegpt.to_messages(rec.data)[0]}


_FIX = {
    "alpaca": '{"instruction": "...", "input": "... (optional)", "output": "..."} on every line',
    "chat": '{"messages": [{"role": "user", "content": "..."}, {"role": "assistant", "content": "..."}]}',
    "text": '{"text": "..."} on every line',
    "sharegpt": sharegpt.EXAMPLE + ' ("from": human, gpt or system)',
}


def _nonempty_str(value: Any) -> bool:
    return isinstance(value, str) and bool(value.strip())


def _problem(data: dict[str, Any], fmt: str) -> str | None:
    if fmt == "text":
        return None if _nonempty_str(data.get("text")) else "missing or empty field 'text'"
    if fmt == "alpaca":
        for name in ("instruction", "output"):
            if not _nonempty_str(data.get(name)):
                return f"missing or empty field '{name}'"
        if data.get("input") is not None and not isinstance(data["input"], str):
            return "field 'input' must be a string"
        return None
    if fmt == "sharegpt":
        messages, problem = sharegpt.to_messages(data)
        return problem or _problem({"messages": messages}, "chat")
    messages = data.get("messages")
    if not isinstance(messages, list) or not messages:
        return "missing or empty field 'messages' (a list of {role, content})"
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ROLES or "content" not in m:
            return f"messages[{i}] needs a role ({'/'.join(ROLES)}) and a content"
    if not any(m["role"] == "assistant" for m in messages):
        return "no assistant message: nothing to learn from"
    return None
