"""What a shim is: one upstream problem, when it bites, where it is tracked, and its fix."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Shim:
    name: str
    symptom: str  # what the user sees without the shim
    trigger: str  # the setting/version combination that causes it
    upstream: str  # where the problem is tracked
    needed: Callable[[], str | None]  # None when not needed, else the reason it is needed here
    apply: Callable[[], None]  # must be idempotent
    is_applied: Callable[[], bool]


@dataclass(frozen=True)
class ShimReport:
    name: str
    status: str  # "applied" | "already applied" | "not needed"
    reason: str
    symptom: str
    upstream: str
