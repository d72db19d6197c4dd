"""The only module that writes (and reads) process environment variables.

The ``env`` plugin exports the env group here before torch, CUDA or NCCL are imported, since those read
their variables once, at import or at first use. Everything else reads variables through :func:`get`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass

# *TOKEN*, *KEY*, *SECRET*, *PASSWORD* as parts of a name (HF_TOKEN, WANDB_API_KEY, AWS_SECRET_ACCESS_KEY,
# DB_PASSWORD, HFTOKEN), but not words that merely begin with one (TOKENIZERS_PARALLELISM, KEYBOARD).
_SECRET = re.compile(r"(TOKEN|KEY|SECRET|PASSWORD|PASSWD)S?$")
REDACTED = "[REDACTED]"


def is_secret(name: str) -> bool:
    """True for names that look like credentials (HF_TOKEN, WANDB_API_KEY, ...)."""
    return any(_SECRET.search(part) for part in re.split(r"[^A-Z0-9]+", name.upper()) if part)


def shown(name: str, value: object) -> str:
    """The value as it may appear in logs and saved configs."""
    return REDACTED if is_secret(name) else str(value)


@dataclass(frozen=True)
class Exported:
    name: str
    value: str  # already redacted when secret
    action: str  # "set" | "replaced" | "kept" (already set, override=false)
    previous: str | None = None  # redacted when secret


def export(
    variables: Mapping[str, object], *, override: bool, environ: MutableMapping[str, str] | None = None
) -> list[Exported]:
    """Write ``variables`` into the environment; with ``override=False`` a variable already set is kept."""
    environ = os.environ if environ is None else environ
    done = []
    for name, raw in variables.items():
        value = "" if raw is None else str(raw)
        before = environ.get(name)
        if before is not None and not override:
            done.append(Exported(name, shown(name, before), "kept"))
            continue
        environ[name] = value
        action = "set" if before is None else ("replaced" if before != value else "set")
        prev = None if before is None else shown(name, before)
        done.append(Exported(name, shown(name, value), action, prev))
    return done


def get(name: str, default: str | None = None) -> str | None:
    """Read one variable (the single reading place, so the project's env use stays greppable)."""
    return os.environ.get(name, default)


def snapshot(names: list[str] | None = None) -> dict[str, str]:
    """The variables in effect, redacted: all of ``names``, or every variable gemma-run cares about."""
    prefixes = ("CUDA_", "NCCL_", "TORCH", "TRANSFORMERS_", "HF_", "TOKENIZERS_", "OMP_", "PYTORCH_", "DS_",
                "ACCELERATE_", "BNB_", "GEMMA_RUN_", "MASTER_", "WORLD_SIZE", "RANK", "LOCAL_RANK")
    keep = names if names is not None else [k for k in os.environ if k.startswith(prefixes)]
    return {k: shown(k, os.environ[k]) for k in sorted(keep) if k in os.environ}
