"""Chat messages before a chat template sees them (inference prompts and training records alike).

Chat templates read one system message, the first: Gemma's folds ``messages[0]`` into the first user turn and
rejects or drops any other. So the system messages that open a chat are joined into one, in order, with a blank
line between them (the separator Gemma's template puts between a system prompt and the user's text).
"""

from __future__ import annotations

from typing import Any

SEPARATOR = "\n\n"


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    return SEPARATOR.join(str(part.get("text", "")) for part in content
                          if isinstance(part, dict) and part.get("type") == "text")


def join_system(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``messages`` with the system messages that open it joined into one (a copy; unchanged when there is
    at most one)."""
    lead = 0
    while lead < len(messages) and messages[lead].get("role") == "system":
        lead += 1
    if lead < 2:
        return messages
    joined = {"role": "system", "content": SEPARATOR.join(_text(m["content"]) for m in messages[:lead])}
    return [joined, *messages[lead:]]
