"""torch.compile's recompile limit raised for compiled decoder layers (``train.compile_layers``, and the decode
step's ``generation.compile_scope=layers``).

Symptom: the layers' one compiled frame has a graph per variant: sliding or global mask, static or shape-generic,
training or evaluation (grad mode), checkpointed or not (train.checkpoint_layers). Past torch's default of 8
variants a frame, dynamo runs the rest uncompiled with only a warning ("torch._dynamo hit config.recompile_limit").
Trigger: ``train.compile_layers`` on (applied by gemma_run.training.compile_layers, after peft); the decode
step's layers compiled (gemma_run.infer.engine.layer_compile: a graph per kind of layer and session shape).
Upstream: torch._dynamo.config.recompile_limit (``cache_size_limit`` before torch 2.6),
https://pytorch.org/docs/stable/torch.compiler_troubleshooting.html.
"""

from __future__ import annotations

from gemma_run.patches.base import Patch

RECOMPILE_LIMIT = 32
_saved: dict[str, int] = {}  # config name -> the value before the patch


def _name(config) -> str:
    return "recompile_limit" if hasattr(config, "recompile_limit") else "cache_size_limit"  # torch < 2.6


def _config():
    import torch._dynamo

    return torch._dynamo.config


def _needed(compiled: bool = True, **_) -> str | None:
    if not compiled:
        return None
    config = _config()
    value = getattr(config, _name(config))
    if value >= RECOMPILE_LIMIT:
        return None
    return f"torch._dynamo.config.{_name(config)}={value} < {RECOMPILE_LIMIT} variants of the compiled layers"


def _is_applied(**_) -> bool:
    return bool(_saved)


def _apply(**_) -> None:
    config = _config()
    name = _name(config)
    if getattr(config, name) < RECOMPILE_LIMIT:
        _saved.setdefault(name, getattr(config, name))
        setattr(config, name, RECOMPILE_LIMIT)


def _undo(**_) -> None:
    config = _config()
    for name, value in _saved.items():
        setattr(config, name, value)
    _saved.clear()


PATCH = Patch(
    name="torch._dynamo.recompile_limit",
    phase="after_peft",
    symptom="compiled decoder layers run partly uncompiled after 8 variants (torch._dynamo hit "
            "config.recompile_limit), with only a warning",
    trigger="train.compile_layers on (sliding/global masks x grad mode x checkpointing make > 8 graphs); "
            "generation.compile_scope=layers (layer kinds x session shapes)",
    upstream="https://pytorch.org/docs/stable/torch.compiler_troubleshooting.html",
    needed=_needed,
    apply=_apply,
    undo=_undo,
    is_applied=_is_applied,
)
