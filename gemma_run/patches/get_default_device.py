"""torch.get_default_device is missing on torch < 2.3.

Symptom: ``AttributeError: module 'torch' has no attribute 'get_default_device'`` from code that calls it
without checking torch's version: transformers 5.x's ``from_pretrained`` calls it unconditionally (it needs
torch >= 2.6, so only a stack mixing versions hits this), and so do user scripts and other libraries written
against torch >= 2.3 (hand-written scripts carry a patch for it).
Trigger: torch < 2.3 (e.g. torch 2.2) with such a caller. Checked on the oldest supported stack (torch 2.2.2 +
transformers 4.53.3, scripts/old_stack/): transformers 4.52-4.57 only call it on torch >= 2.3 and 4.49-4.51
never, so there the shim is applied (the attribute is missing) but loading does not depend on it.
Upstream: torch added the function in https://github.com/pytorch/pytorch/pull/116014 (torch 2.3).

Hand-written scripts patch it to return a hard-coded ``cuda:0``, which puts models on the wrong device whenever
``torch.set_default_device`` or a ``with torch.device(...)`` block chose another. This version returns what
torch 2.3's own function returns: the device of a new empty tensor, which honours both.
"""

from __future__ import annotations

from gemma_run.patches.base import Patch

_MARK = "_gemma_run_shim"


def _needed(**_) -> str | None:
    import torch

    if hasattr(torch, "get_default_device"):
        return None
    return f"torch {torch.__version__} has no torch.get_default_device (added in torch 2.3)"


def _get_default_device():
    import torch

    # torch 2.3's implementation: the device a factory function would use right now.
    return torch.tensor([]).device


def _apply(**_) -> None:
    import torch

    if not hasattr(torch, "get_default_device"):
        setattr(_get_default_device, _MARK, True)
        torch.get_default_device = _get_default_device


def _is_applied(**_) -> bool:
    import torch

    return getattr(getattr(torch, "get_default_device", None), _MARK, False)


def _undo(**_) -> None:
    import torch

    if _is_applied():
        del torch.get_default_device


PATCH = Patch(
    name="torch.get_default_device",
    phase="process_start",
    symptom="AttributeError: module 'torch' has no attribute 'get_default_device' when loading a model",
    trigger="torch < 2.3 with a caller that does not check the torch version",
    upstream="https://github.com/pytorch/pytorch/pull/116014",
    needed=_needed,
    apply=_apply,
    undo=_undo,
    is_applied=_is_applied,
)
