"""The patch registry: every patch described, in a known phase, safe to apply twice, undone, listed by the doctor."""

from __future__ import annotations

import pytest

from gemma_run.patches import PHASES, registry


@pytest.mark.parametrize("patch", registry.PATCHES, ids=lambda p: p.name)
def test_every_patch_is_described(patch) -> None:
    assert patch.phase in PHASES
    for text in (patch.name, patch.symptom, patch.trigger, patch.upstream):
        assert isinstance(text, str) and text.strip()
    assert patch.upstream.startswith("https://")
    assert callable(patch.apply) and callable(patch.undo) and callable(patch.needed)


def test_names_are_unique_and_listed_in_phase_order() -> None:
    names = [p.name for p in registry.PATCHES]
    assert len(names) == len(set(names))
    order = [PHASES.index(p.phase) for p in registry.PATCHES]
    assert order == sorted(order)


def test_unknown_phase_is_refused() -> None:
    from gemma_run.patches.base import Patch

    with pytest.raises(ValueError, match="phase"):
        Patch("x", "after_lunch", "s", "t", "https://x", lambda **_: None, lambda **_: None, lambda **_: None)
    with pytest.raises(ValueError, match="phase"):
        registry.apply("after_lunch")


def test_quiet_logging_twice_is_a_no_op_and_undo_restores() -> None:
    import logging

    from gemma_run.patches import quiet_optional_imports as q

    registry.undo(q.PATCH.name)
    logging.getLogger("torchao").setLevel(logging.INFO)
    assert registry.apply_one(q.PATCH.name).status == "applied"
    assert registry.apply_one(q.PATCH.name).status == "already applied"
    assert logging.getLogger("torchao").level == logging.ERROR
    registry.undo(q.PATCH.name)
    assert logging.getLogger("torchao").level == logging.INFO
    registry.apply_one(q.PATCH.name)


def test_dynamo_limit_twice_is_a_no_op_and_undo_restores() -> None:
    import torch._dynamo

    from gemma_run.patches import dynamo_recompile_limit as d

    config = torch._dynamo.config
    name = d._name(config)
    before = getattr(config, name)
    if before >= d.RECOMPILE_LIMIT:
        pytest.skip("this torch's limit is already high enough")
    assert registry.apply_one(d.PATCH.name, compiled=True).status == "applied"
    assert registry.apply_one(d.PATCH.name, compiled=True).status == "already applied"
    assert getattr(config, name) == d.RECOMPILE_LIMIT
    registry.undo(d.PATCH.name)
    assert getattr(config, name) == before
    assert registry.apply_one(d.PATCH.name, compiled=False).status == "not needed"


def test_decode_attention_registration_twice_is_a_no_op_and_undo_removes_it() -> None:
    from transformers.modeling_utils import AttentionInterface

    from gemma_run.patches import decode_attention as a

    registry.undo(a.PATCH.name)
    assert a.NAME not in AttentionInterface._global_mapping
    assert registry.apply_one(a.PATCH.name).status == "applied"
    assert registry.apply_one(a.PATCH.name).status == "already applied"
    assert a.NAME in AttentionInterface._global_mapping
    registry.undo(a.PATCH.name)
    assert a.NAME not in AttentionInterface._global_mapping


def test_get_default_device_undo_restores(monkeypatch) -> None:
    import torch

    from gemma_run.patches import get_default_device as g

    real = torch.get_default_device
    monkeypatch.delattr(torch, "get_default_device")
    assert registry.apply_one(g.PATCH.name).status == "applied"
    assert registry.apply_one(g.PATCH.name).status == "already applied"
    registry.undo(g.PATCH.name)
    assert not hasattr(torch, "get_default_device")
    monkeypatch.setattr(torch, "get_default_device", real, raising=False)
    assert registry.apply_one(g.PATCH.name).status == "not needed"


def test_the_doctor_lists_every_patch() -> None:
    from gemma_run.doctor.shims import shims_check

    f = shims_check(None)
    rows = f.details["shims"]
    assert [r["name"] for r in rows] == [p.name for p in registry.PATCHES]
    for r in rows:
        assert r["phase"] in PHASES and r["state"] and "trigger_holds" in r and "applied" in r
    assert all(p.name in f.finding for p in registry.PATCHES)


def test_bitsandbytes_repeated_warnings_once_per_message_twice_is_a_no_op_and_undo_removes_it() -> None:
    import logging

    from gemma_run.patches import bitsandbytes_repeated_warnings as b

    registry.undo(b.PATCH.name)
    assert registry.apply_one(b.PATCH.name, quant_backend="none").status == "not needed"
    assert registry.apply_one(b.PATCH.name, quant_backend="bitsandbytes").status == "applied"
    assert registry.apply_one(b.PATCH.name, quant_backend="bitsandbytes").status == "already applied"
    logger = logging.getLogger(b.LOGGER)
    assert len(b._filters()) == 1
    cast = "MatMul8bitLt: inputs will be cast from %s to float16 during quantization"
    records = [logger.makeRecord(b.LOGGER, logging.WARNING, __file__, 1, msg, (arg,), None)
               for msg, arg in ((cast, "torch.bfloat16"), (cast, "torch.float32"), ("another %s", 1))]
    assert [logger.filter(r) for r in records] == [True, False, True]  # the same message once, whatever its args
    registry.undo(b.PATCH.name)
    assert b._filters() == [] and logger.filter(records[1])


def test_doctor_lists_the_bitsandbytes_patch() -> None:
    from gemma_run.doctor.shims import shims_check

    rows = shims_check(None).details["shims"]
    assert "bitsandbytes.repeated_warnings" in [r["name"] for r in rows]
