"""A prompt item -> the exact text the model sees (plain, or through the tokenizer's chat template).

Gemma has no system role: its template folds a system message into the first user turn
(``<start_of_turn>user\\n{system}\\n\\n{user}<end_of_turn>``). Templates that reject a system role
(Gemma 2's raises "System role not supported") get the same folding done here, so ``system_prompt`` works
with every chat model.
"""

from __future__ import annotations

import logging
from typing import Any

from gemma_run.app.errors import GemmaRunError
from gemma_run.chat import join_system
from gemma_run.infer.prompts import PromptItem

log = logging.getLogger(__name__)


def messages_of(item: PromptItem, system_prompt: str | None) -> list[dict[str, Any]]:
    """The chat of an item: its messages, or one user turn; ``system_prompt`` first unless it has its own."""
    messages = [dict(m) for m in item.messages] if item.messages is not None else \
        [{"role": "user", "content": item.prompt}]
    for m in messages:
        if m["role"] == "model":
            m["role"] = "assistant"
    if system_prompt and messages[0]["role"] != "system":
        messages.insert(0, {"role": "system", "content": system_prompt})
    return join_system(messages)  # templates read one system message: several are joined, in order


def fold_system(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Gemma's folding: the system message's text + a blank line, prefixed to the first user turn."""
    if not messages or messages[0]["role"] != "system":
        return messages
    system, rest = messages[0], [dict(m) for m in messages[1:]]
    if rest and rest[0]["role"] == "user" and isinstance(rest[0]["content"], str):
        rest[0]["content"] = f"{system['content']}\n\n{rest[0]['content']}"
    return rest


def render(item: PromptItem, tokenizer: Any, chat: bool, system_prompt: str | None) -> str:
    """The text to tokenize. Chat when ``chat=true`` or the item is a chat (JSONL ``messages``)."""
    if not chat and item.messages is None:
        return str(item.prompt)
    if not getattr(tokenizer, "chat_template", None):
        raise GemmaRunError(f"{item.source}: chat needs a chat template, and this tokenizer has none",
                            key="chat", fix="chat=false with plain `prompt` lines, or use an instruction-tuned "
                                            "checkpoint (its tokenizer_config.json carries the template)")
    messages = messages_of(item, system_prompt)
    try:
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    except Exception as e:  # jinja2 TemplateError raised by the template itself (e.g. no system role)
        if messages[0]["role"] != "system":
            raise GemmaRunError(f"{item.source}: the chat template rejected these messages: {e}",
                                key=item.source, fix="roles must alternate user/assistant, ending with user") from e
        log.info("chat template has no system role; folding the system prompt into the first user turn")
        return tokenizer.apply_chat_template(fold_system(messages), tokenize=False, add_generation_prompt=True)


def render_image_chat(item: PromptItem, processor: Any, system_prompt: str | None) -> str:
    """An image+text prompt through the processor's chat template: the image goes first in the last user turn
    (``<start_of_image>``, which the processor expands to the image's soft tokens)."""
    messages = messages_of(item, system_prompt)
    last = messages[-1]
    text = last["content"] if isinstance(last["content"], str) else None
    if text is not None:
        last["content"] = [{"type": "image"}, {"type": "text", "text": text}]
    template_owner = processor if getattr(processor, "chat_template", None) else processor.tokenizer
    return template_owner.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
