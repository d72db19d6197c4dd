"""ShareGPT-style conversations (as LLaMA-Factory and Axolotl read them) turned into chat messages.

A record ``{"conversations": [{"from": "human", "value": "..."}, {"from": "gpt", "value": "..."}], "system": ...}``
becomes ``[{"role": "system", ...}, {"role": "user", ...}, {"role": "assistant", ...}]``. The optional
top-level ``system`` string (LLaMA-Factory's sharegpt column) becomes the first message. Turns may also be
written with ``role``/``content`` instead of ``from``/``value``.
"""

from __future__ import annotations

from typing import Any

FIELD = "conversations"
# ShareGPT speaker -> chat role. LLaMA-Factory and Axolotl datasets use human/gpt; some use user/assistant.
ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}
EXAMPLE = '{"conversations": [{"from": "human", "value": "..."}, {"from": "gpt", "value": "..."}]}'


def to_messages(record: dict[str, Any]) -> tuple[list[dict[str, str]], str | None]:
    """(messages, None), or ([], the problem) when a turn's speaker or text cannot be read."""
    turns = record.get(FIELD)
    if not isinstance(turns, list) or not turns:
        return [], f"'{FIELD}' must be a non-empty list of {{\"from\", \"value\"}}"
    messages: list[dict[str, str]] = []
    system = record.get("system")
    if system is not None:
        if not isinstance(system, str):
            return [], "field 'system' must be a string"
        if system.strip():
            messages.append({"role": "system", "content": system})
    for i, turn in enumerate(turns):
        if not isinstance(turn, dict):
            return [], f"{FIELD}[{i}] must be an object {{\"from\", \"value\"}}"
        speaker = turn.get("from", turn.get("role"))
        text = turn.get("value", turn.get("content"))
        if speaker not in ROLES:
            return [], (f"{FIELD}[{i}] has \"from\": {speaker!r}; the speakers read are "
                        f"{', '.join(sorted(ROLES))} (tool and function turns are not supported)")
        if not isinstance(text, str):
            return [], f"{FIELD}[{i}] needs a \"value\" string"
        messages.append({"role": ROLES[speaker], "content": text})
    return messages, None
