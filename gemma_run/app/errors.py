"""One error type for everything a user can fix: what is wrong, which key/file, and the fix."""

from __future__ import annotations


class GemmaRunError(Exception):
    """A problem the user can fix. Printed as one clear message, never as a traceback.

    ``key`` names the config key (or ``file``/``file:line``) at fault; ``fix`` says what to do.
    """

    exit_code = 2

    def __init__(self, problem: str, *, key: str | None = None, fix: str | None = None) -> None:
        self.problem = problem
        self.key = key
        self.fix = fix
        super().__init__(self.format())

    def format(self) -> str:
        lines = [f"error: {self.problem}"]
        if self.key:
            lines.append(f"  at:  {self.key}")
        if self.fix:
            lines.append(f"  fix: {self.fix}")
        return "\n".join(lines)


class ConfigError(GemmaRunError):
    """The composed config is invalid (raised before anything heavy is imported)."""


class Problems(GemmaRunError):
    """Several problems found together, reported in one message."""

    def __init__(self, problems: list[GemmaRunError]) -> None:
        self.problems = problems
        body = "\n".join(p.format() for p in problems)
        Exception.__init__(self, f"{len(problems)} problem(s) in the config:\n{body}")
        self.problem, self.key, self.fix = str(self), None, None

    def format(self) -> str:
        return str(self)


def raise_all(problems: list[GemmaRunError]) -> None:
    """Raise nothing, the one problem, or all of them together."""
    if len(problems) == 1:
        raise problems[0]
    if problems:
        raise Problems(problems)
