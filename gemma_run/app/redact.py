"""Secret values kept out of everything a run writes or prints: one rule, applied everywhere.

A secret is the value of an environment variable whose name looks like a credential (``gemma_run.app.env.is_secret``:
HF_TOKEN, WANDB_API_KEY, ...). It reaches a run only through ``env.vars``, so it can appear in three shapes:
a config's ``vars`` mapping, an override (``+env.vars.HF_TOKEN=hf_...``) inside a string (overrides.yaml,
hydra.job.override_dirname, Hydra's "#0 : ..." sweep lines, a command line), and a log line. Each is redacted here.
"""

from __future__ import annotations

import logging
import re
from typing import Any

from gemma_run.app.env import REDACTED, is_secret

# env.vars.NAME=value inside a string. The value runs to the end of the override: up to the next `key=` (after a
# comma or whitespace, as in override_dirname or a logged command line), a line end, or the end of the text. So a
# sweep's values (`=a,b`) and a value with spaces are hidden whole.
_ASSIGNMENT = re.compile(
    r"(env\.vars\.)([A-Za-z0-9_]+)=(.*?)(?=['\"]?[,\s]+['\"]?[+~]{0,2}[A-Za-z_][\w.@/-]*=|['\"]?\]?$|\n)",
    re.MULTILINE,
)


def redact_text(text: str) -> str:
    """``text`` with the value of every secret ``env.vars.NAME=value`` replaced by [REDACTED]."""
    if "env.vars." not in text:
        return text
    return _ASSIGNMENT.sub(lambda m: f"{m[1]}{m[2]}={REDACTED}" if is_secret(m[2]) else m[0], text)


def redact_config(node: Any) -> Any:
    """A copy of a config (plain containers) with secret env values replaced by [REDACTED], also inside override
    strings (`+env.vars.HF_TOKEN=abc` in overrides.yaml and hydra.job.override_dirname)."""
    if isinstance(node, str):
        return redact_text(node)
    if isinstance(node, list):
        return [redact_config(item) for item in node]
    if isinstance(node, dict):
        out = {}
        for key, value in node.items():
            if key == "vars" and isinstance(value, dict):
                out[key] = {k: (REDACTED if is_secret(str(k)) else redact_config(v)) for k, v in value.items()}
            else:
                out[key] = redact_config(value)
        return out
    return node


def install_log_redaction() -> None:
    """Redact every log record this process makes, whatever handlers the logging config has (Hydra logs a sweep's
    overrides, "#0 : +env.vars.HF_TOKEN=...", before each job). Idempotent."""
    previous = logging.getLogRecordFactory()
    if getattr(previous, "redacts_secrets", False):
        return

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        try:
            message = record.getMessage()
        except (TypeError, ValueError):  # a bad format string: logging reports it when the record is emitted
            return record
        redacted = redact_text(message)
        if redacted != message:
            record.msg, record.args = redacted, None
        return record

    factory.redacts_secrets = True  # type: ignore[attr-defined]
    logging.setLogRecordFactory(factory)
