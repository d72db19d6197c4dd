"""Module surgery on a loaded model: its q/k/v and gate/up projections replaced by fused ones for decoding.

Symptom: without it, each decode step runs five small matrix products per layer where two fused ones read the
same weights (gemma_run.infer.engine.fused_projections has the modules and the rules for which groups qualify).
Trigger: ``generation.engine=fast`` with ``generation.fuse_projections`` on (auto: on), at generate time; undone
(the model's own ``torch.nn.Linear`` modules back) before the model trains or is saved.
Upstream: the fused q/k/v load hook of https://github.com/pytorch-labs/gpt-fast (model.py), applied here to a
transformers model's modules.
"""

from __future__ import annotations

from typing import Any

from gemma_run.patches.base import Patch


def _needed(model: Any = None, **_) -> str | None:
    if model is None:
        return None
    return "the fast engine decodes with fused q/k/v and gate/up projections"


def _is_applied(model: Any = None, **_) -> bool:
    from gemma_run.infer.engine.fused_projections import MARK

    return model is not None and MARK in model.__dict__


def _apply(model: Any, **_) -> int:
    from gemma_run.infer.engine import fused_projections

    return fused_projections.fuse(model)


def _undo(model: Any, **_) -> None:
    from gemma_run.infer.engine import fused_projections

    fused_projections.unfuse(model)


PATCH = Patch(
    name="model.fused_projections",
    phase="generate",
    symptom="the decode step runs q, k, v, gate and up as five separate small products per layer",
    trigger="generation.engine=fast with generation.fuse_projections on (auto: on)",
    upstream="https://github.com/pytorch-labs/gpt-fast",
    needed=_needed,
    apply=_apply,
    undo=_undo,
    is_applied=_is_applied,
)
