"""Chat templates for tests."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

# A template that refuses the system role, as some models' do
NO_SYSTEM_ROLE = ("{% for m in messages %}{% if m['role'] == 'system' %}"
                  "{{ raise_exception('System role not supported') }}{% endif %}"
                  "[{{ m['role'] }}]{{ m['content'] }}{% endfor %}")


@contextmanager
def without_system_role(tokenizer: Any) -> Iterator[Any]:
    """``tokenizer`` with :data:`NO_SYSTEM_ROLE` as its chat template for the block."""
    saved = tokenizer.chat_template
    tokenizer.chat_template = NO_SYSTEM_ROLE
    try:
        yield tokenizer
    finally:
        tokenizer.chat_template = saved
