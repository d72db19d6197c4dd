"""What the plugins share: the composed config, the run dir, and the run's result so far."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig


@dataclass
class RunContext:
    cfg: DictConfig
    run_dir: Path
    result: dict[str, Any] = field(default_factory=dict)
    is_main_process: bool = True  # rank 0 alone writes outputs

    def write_json(self, name: str, data: Any) -> Path:
        """Write a JSON file into the run dir atomically (a crash never leaves half a file)."""
        return write_json(self.run_dir / name, data)


def write_json(path: Path, data: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")
    os.replace(tmp, path)
    return path
