"""A user plugin for tests: holds its run (and so its run dir's lock) until a file appears."""

from __future__ import annotations

import time
from pathlib import Path


class WaitForFile:
    def __init__(self, path: str, timeout: float = 120.0) -> None:
        self.path, self.timeout = Path(path), timeout

    def __call__(self, ctx) -> None:
        deadline = time.monotonic() + self.timeout
        while not self.path.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
