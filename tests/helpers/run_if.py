"""RunIf: one mark for every test that needs something this machine may lack (GPUs, optional packages, a newer
transformers). A missing requirement skips the test with a reason naming it; ``gpus > 0`` also adds the ``gpu``
marker, so ``pytest -m gpu`` selects the test.

    @RunIf(gpus=1, liger=True)
    def test_...

    pytestmark = RunIf(deepspeed=True)
    pytest.param("deepspeed=zero2", marks=RunIf(deepspeed=True))

Package checks look for the module (importlib.util.find_spec) without importing it; the GPU count is taken only
when a test that needs GPUs is about to run (a string condition pytest evaluates at setup), so collecting the
suite imports no torch.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
from typing import Any

import pytest

# RunIf's flag -> (the module it needs, what the reason calls it)
PACKAGES = {
    "deepspeed": ("deepspeed", "deepspeed"),
    "torchao": ("torchao", "torchao"),
    "liger": ("liger_kernel", "liger-kernel"),
    "bnb": ("bitsandbytes", "bitsandbytes"),
    "triton": ("triton", "triton"),
}


class Marks(list):
    """The marks RunIf gives, usable as a decorator, as ``pytestmark`` and as ``pytest.param(marks=...)``."""

    def __call__(self, obj: Any) -> Any:
        for mark in self:
            obj = mark(obj)
        return obj


def installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def transformers_version() -> str | None:
    try:
        return importlib.metadata.version("transformers")
    except importlib.metadata.PackageNotFoundError:
        return None


def RunIf(gpus: int = 0, deepspeed: bool = False, torchao: bool = False, liger: bool = False,
          min_transformers: str | None = None, bnb: bool = False, triton: bool = False) -> Marks:
    """Marks that skip the test unless this machine has ``gpus`` CUDA GPUs and the packages asked for."""
    from packaging.version import Version

    wanted = {"deepspeed": deepspeed, "torchao": torchao, "liger": liger, "bnb": bnb, "triton": triton}
    missing = [f"{PACKAGES[flag][1]} (not installed)" for flag, on in wanted.items()
               if on and not installed(PACKAGES[flag][0])]
    if min_transformers is not None:
        have = transformers_version()
        if have is None or Version(have) < Version(min_transformers):
            missing.append(f"transformers>={min_transformers} (found {have or 'none'})")
    marks = Marks()
    if gpus > 0:
        marks.append(pytest.mark.gpu)
        plural = "s" if gpus > 1 else ""
        marks.append(pytest.mark.skipif(f"__import__('torch').cuda.device_count() < {gpus}",
                                        reason=f"needs {gpus} CUDA GPU{plural} (run these on the device machine)"))
    if missing:
        marks.append(pytest.mark.skipif(True, reason="needs " + ", ".join(missing)))
    return marks
