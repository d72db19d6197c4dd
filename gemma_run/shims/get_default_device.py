"""torch.get_default_device is missing on torch < 2.3.

Symptom: ``AttributeError: module 'torch' has no attribute 'get_default_device'`` from transformers'
``from_pretrained`` (transformers >= 4.49 calls it to choose where to build the model).
Trigger: torch < 2.3 (e.g. the seeds' torch 2.2) with a transformers that calls it.
Upstream: torch added it in https://github.com/pytorch/pytorch/pull/115728 (torch 2.3); transformers'
use: https://github.com/huggingface/transformers/issues/36409.

The seeds patched it to return a hard-coded ``cuda:0``, which puts models on the wrong device whenever
``torch.set_default_device`` or a ``with torch.device(...)`` block chose another. This version returns what
torch 2.3's own function returns: the device of a new empty tensor, which honours both.
"""

from __future__ import annotations

from gemma_run.shims.base import Shim

_MARK = "_gemma_run_shim"


def _needed() -> str | None:
    import torch

    if hasattr(torch, "get_default_device"):
        return None
    return f"torch {torch.__version__} has no torch.get_default_device (added in torch 2.3)"


def _get_default_device():
    import torch

    # torch 2.3's implementation: the device a factory function would use right now.
    return torch.tensor([]).device


def _apply() -> None:
    import torch

    if not hasattr(torch, "get_default_device"):
        setattr(_get_default_device, _MARK, True)
        torch.get_default_device = _get_default_device


def _is_applied() -> bool:
    import torch

    return getattr(getattr(torch, "get_default_device", None), _MARK, False)


SHIM = Shim(
    name="torch.get_default_device",
    symptom="AttributeError: module 'torch' has no attribute 'get_default_device' when loading a model",
    trigger="torch < 2.3 with transformers >= 4.49",
    upstream="https://github.com/pytorch/pytorch/pull/115728",
    needed=_needed,
    apply=_apply,
    is_applied=_is_applied,
)
