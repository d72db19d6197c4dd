"""RunIf: a missing requirement gives a skip mark whose reason names it; GPU tests carry the gpu marker."""

from __future__ import annotations

import pytest
from helpers import run_if
from helpers.run_if import RunIf


def _skips(marks: run_if.Marks) -> list[pytest.Mark]:
    return [m.mark for m in marks if m.name == "skipif"]


def test_nothing_asked_gives_no_marks() -> None:
    assert list(RunIf()) == []


def test_a_missing_package_skips_with_its_name(monkeypatch) -> None:
    monkeypatch.setattr(run_if, "installed", lambda module: module != "liger_kernel")
    skips = _skips(RunIf(liger=True, deepspeed=True))
    assert len(skips) == 1 and skips[0].args == (True,)
    assert skips[0].kwargs["reason"] == "needs liger-kernel (not installed)"


def test_an_installed_package_gives_no_skip(monkeypatch) -> None:
    monkeypatch.setattr(run_if, "installed", lambda module: True)
    assert _skips(RunIf(deepspeed=True, torchao=True, liger=True, bnb=True)) == []


def test_an_old_transformers_skips_with_both_versions(monkeypatch) -> None:
    monkeypatch.setattr(run_if, "transformers_version", lambda: "4.50.0")
    (skip,) = _skips(RunIf(min_transformers="4.56"))
    assert skip.kwargs["reason"] == "needs transformers>=4.56 (found 4.50.0)"
    monkeypatch.setattr(run_if, "transformers_version", lambda: "4.57.1")
    assert _skips(RunIf(min_transformers="4.56")) == []


def test_gpus_add_the_gpu_marker_and_a_device_count_check() -> None:
    marks = RunIf(gpus=2)
    assert "gpu" in [m.name for m in marks]
    (skip,) = _skips(marks)
    assert skip.args == ("__import__('torch').cuda.device_count() < 2",)
    assert skip.kwargs["reason"].startswith("needs 2 CUDA GPUs")


@RunIf(min_transformers="999")
def test_a_test_whose_requirement_is_missing_is_skipped() -> None:
    raise AssertionError("ran without transformers>=999")


def test_it_marks_a_function_as_a_decorator() -> None:
    def f() -> None: ...

    RunIf(gpus=1, bnb=True)(f)
    assert {m.name for m in f.pytestmark} >= {"gpu", "skipif"}
