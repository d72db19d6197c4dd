"""What a patch is: one change to another library's code or state, when it is needed, where the problem is
tracked, how it is applied (safe to apply twice) and undone."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

# The points of a run at which the registry applies patches, in run order.
PHASES = ("process_start", "before_load", "after_load", "before_peft", "after_peft", "generate")


def _never_applied(**_: Any) -> bool:
    return False


@dataclass(frozen=True)
class Patch:
    name: str
    phase: str  # one of PHASES
    symptom: str  # what the user sees without the patch
    trigger: str  # the setting/version combination that calls for it
    upstream: str  # where the problem (or the patched library's API) is tracked
    needed: Callable[..., str | None]  # (**context) -> None when not needed, else the reason it is needed here
    apply: Callable[..., Any]  # (**context) -> what the call site needs back; idempotent
    undo: Callable[..., None]  # (**context): puts the original back
    is_applied: Callable[..., bool] = field(default=_never_applied)  # (**context)

    def __post_init__(self) -> None:
        if self.phase not in PHASES:
            raise ValueError(f"patch {self.name}: phase {self.phase!r} is not one of {PHASES}")


@dataclass(frozen=True)
class PatchReport:
    name: str
    phase: str
    status: str  # "applied" | "already applied" | "not needed"
    reason: str
    symptom: str
    upstream: str
    value: Any = field(default=None, repr=False, compare=False)  # what apply returned
