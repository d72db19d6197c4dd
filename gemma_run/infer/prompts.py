"""The prompts of a run: ``prompt=...`` or ``prompts_file=...`` (txt or JSONL), checked line by line.

A ``.txt`` file holds one prompt per line; blank lines are skipped (they are not prompts). A ``.jsonl`` file
holds one JSON object per line with ``prompt`` (a string), ``messages`` (a chat: a list of
``{"role", "content"}``) or ``conversations`` (ShareGPT: ``{"from": human|gpt|system, "value"}``; a final
gpt turn is left out), and optionally ``id`` (copied to the output) and ``image`` (a path, relative to
the prompts file, for image+text models). Every problem is reported with its ``file:line`` before the model is loaded.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from gemma_run.app.errors import ConfigError, GemmaRunError
from gemma_run.chat import sharegpt

ROLES = ("system", "user", "assistant", "model")


@dataclass
class PromptItem:
    index: int  # position in the input: the output's order and the resume key
    source: str  # "prompt" or "file:line"
    prompt: str | None = None
    messages: list[dict[str, Any]] | None = None
    id: Any = None
    image: str | None = None  # as written in the file (what resume compares)
    image_path: str | None = None  # resolved against the prompts file's directory

    def record(self) -> dict[str, Any]:
        """The input part of this prompt's line in generations.jsonl (also what resume compares)."""
        out: dict[str, Any] = {"index": self.index}
        if self.id is not None:
            out["id"] = self.id
        if self.messages is not None:
            out["messages"] = self.messages
        else:
            out["prompt"] = self.prompt
        if self.image is not None:
            out["image"] = self.image
        return out


def read_prompts(cfg: DictConfig) -> list[PromptItem]:
    """Every prompt of the run, in input order. Raises the problems found, all of them at once."""
    from gemma_run.app.errors import raise_all

    items, problems = collect(cfg)
    raise_all(problems)
    return items


def collect(cfg: DictConfig) -> tuple[list[PromptItem], list[GemmaRunError]]:
    if cfg.prompt is not None and cfg.prompts_file:
        return [], [ConfigError("both prompt and prompts_file are set", key="prompt",
                                fix="keep one: prompt=... for one prompt, prompts_file=... for a batch")]
    if cfg.prompts_file:
        return read_file(Path(str(cfg.prompts_file)).expanduser())
    prompt = "Hello" if cfg.prompt is None else str(cfg.prompt)
    if not prompt.strip():
        return [], [ConfigError("prompt is empty", key="prompt", fix='prompt="Write a haiku about GPUs"')]
    return [PromptItem(0, "prompt", prompt=prompt)], []


def read_file(path: Path) -> tuple[list[PromptItem], list[GemmaRunError]]:
    if not path.is_file():
        return [], [ConfigError(f"prompts_file {path} does not exist", key="prompts_file",
                                fix="give the path of a .txt (one prompt per line) or .jsonl file; relative paths "
                                    "are relative to the directory you run gemma-run from")]
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        return [], [ConfigError(f"cannot read prompts_file {path}: {e}", key="prompts_file",
                                fix="save it as UTF-8 text")]
    jsonl = path.suffix.lower() in (".jsonl", ".json")
    items: list[PromptItem] = []
    problems: list[GemmaRunError] = []
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        if not jsonl:
            items.append(PromptItem(len(items), where, prompt=line))
            continue
        item, problem = _parse_json_line(line, where, len(items))
        if problem is not None:
            problems.append(problem)
        elif item is not None:
            items.append(item)
    if not items and not problems:
        problems.append(ConfigError(f"prompts_file {path} holds no prompts", key="prompts_file",
                                    fix="one prompt per line (.txt) or one JSON object per line (.jsonl)"))
    return items, problems[:20]


def _parse_json_line(line: str, where: str, index: int) -> tuple[PromptItem | None, GemmaRunError | None]:
    example = '{"prompt": "Hello"} or {"messages": [{"role": "user", "content": "Hello"}]}'
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as e:
        return None, ConfigError(f"malformed JSON: {e.msg} (column {e.colno})", key=where,
                                 fix=f"each line must be one JSON object, e.g. {example}")
    if not isinstance(obj, dict):
        return None, ConfigError(f"expected a JSON object, got {type(obj).__name__}", key=where, fix=example)
    extra = {"id": obj.get("id"), "image": obj.get("image")}
    if extra["image"] is not None:
        if not isinstance(extra["image"], str) or not extra["image"]:
            return None, ConfigError("image must be a path (string)", key=where, fix='"image": "cat.png"')
        image = Path(extra["image"]).expanduser()
        image = image if image.is_absolute() else Path(where.rsplit(":", 1)[0]).parent / image
        if not image.is_file():
            return None, ConfigError(f"image {image} does not exist", key=where,
                                     fix="give the image's path (relative paths are relative to the prompts file)")
        extra["image_path"] = str(image)
    if "messages" not in obj and sharegpt.FIELD in obj:
        return _sharegpt_line(obj, where, index, extra)
    if "messages" in obj:
        messages = obj["messages"]
        problem = _check_messages(messages)
        if problem:
            return None, ConfigError(problem, key=where, fix=example)
        return PromptItem(index, where, messages=messages, **extra), None
    prompt = obj.get("prompt")
    if prompt is None:
        return None, ConfigError("no `prompt` or `messages` key (nor ShareGPT `conversations`)", key=where,
                                 fix=example)
    if not isinstance(prompt, str) or not prompt.strip():
        return None, ConfigError("empty prompt" if isinstance(prompt, str) else "`prompt` must be a string",
                                 key=where, fix="give a non-empty string, or delete the line")
    return PromptItem(index, where, prompt=prompt, **extra), None


def _sharegpt_line(obj: dict[str, Any], where: str, index: int,
                   extra: dict[str, Any]) -> tuple[PromptItem | None, GemmaRunError | None]:
    """A ShareGPT conversation: the prompt is the conversation up to its last human turn (a final gpt turn,
    the reference answer in a training file, is left out)."""
    messages, problem = sharegpt.to_messages(obj)
    if messages and messages[-1]["role"] == "assistant":
        messages = messages[:-1]
    problem = problem or _check_messages(messages)
    if problem:
        return None, ConfigError(problem, key=where, fix=sharegpt.EXAMPLE)
    return PromptItem(index, where, messages=messages, **extra), None


def _check_messages(messages: Any) -> str | None:
    if not isinstance(messages, list) or not messages:
        return "`messages` must be a non-empty list of {role, content}"
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ROLES or "content" not in m:
            return f"messages[{i}] must be {{\"role\": one of {'/'.join(ROLES)}, \"content\": ...}}"
        content = m["content"]
        if isinstance(content, str) and not content.strip():
            return f"messages[{i}] has empty content"
    if messages[-1]["role"] not in ("user",):
        return "the last message must be the user's (the model answers it)"
    return None
