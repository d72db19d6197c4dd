"""Compiled decoder layers (train.compile_layers) on CPU: when auto turns them on, the conflict with Liger's RoPE
named with its fix, and a real LoRA run of the tiny Gemma 3 with activation checkpointing whose compiled layers
give the uncompiled run's loss curve and an adapter with the same keys."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers.data import alpaca_rows, write_jsonl
from helpers.runs import losses, train_api

from gemma_run.app.errors import ConfigError
from gemma_run.training import compile_layers, fused_ops


@pytest.fixture
def alpaca(tmp_path: Path) -> Path:
    return write_jsonl(tmp_path / "alpaca.jsonl", alpaca_rows())


def test_auto_compiles_on_a_cuda_gpu_without_deepspeed_only() -> None:
    assert compile_layers.choose(None, "auto", cuda=True, deepspeed=False).on
    assert not compile_layers.choose(None, "auto", cuda=False, deepspeed=False).on
    off = compile_layers.choose(None, "auto", cuda=True, deepspeed=True)
    assert not off.on and "DeepSpeed" in off.why
    assert not compile_layers.choose(None, "liger", cuda=True, deepspeed=False).on  # an explicit liger wins
    assert compile_layers.choose(True, "none", cuda=False, deepspeed=True).on
    assert not compile_layers.choose(False, "auto", cuda=True, deepspeed=False).on
    with pytest.raises(ConfigError) as e:
        compile_layers.choose(True, "liger", cuda=True, deepspeed=False)
    assert e.value.key == "train.compile_layers" and "train.fused_ops=auto" in e.value.fix


def test_fused_ops_auto_gives_way_to_compiled_layers() -> None:
    from types import SimpleNamespace

    model = SimpleNamespace(config=SimpleNamespace(model_type="gemma3_text"))
    kind, why = fused_ops.choose("auto", model, compiled=True)
    assert kind == "none" and "compile_layers" in why


@pytest.mark.slow
def test_compiled_layers_train_the_uncompiled_curve(compose_cfg, alpaca: Path, tmp_path: Path) -> None:
    """4 LoRA steps with every layer checkpointed, no dropout: the compiled layers' losses and trained adapter
    are the uncompiled run's (fp32 on CPU, up to the order inductor sums in)."""
    from safetensors.torch import load_file

    common = [f"data.train_file={alpaca}", "train.max_steps=4", "train.save_steps=4", "lora.dropout=0",
              "train.gradient_checkpointing=true", "train.learning_rate=1e-3"]
    ref = train_api(compose_cfg, tmp_path / "eager", *common, "train.compile_layers=false")
    got = train_api(compose_cfg, tmp_path / "compiled", *common, "train.compile_layers=true")
    assert ref["compile_layers"] == 0 and got["compile_layers"] == 2, got["compile_layers_why"]
    # really compiled: graphs were made for the layers (sliding and global layers differ by their mask), and
    # nothing in them fell back to eager
    assert got["compile_layers_graphs"] >= 1 and got["compile_layers_graph_breaks"] == 0
    assert "compile_layers_graphs" not in ref
    assert got["checkpointed_layers"] == 2
    a, b = losses(tmp_path / "eager"), losses(tmp_path / "compiled")
    assert sorted(a) == sorted(b) == [1, 2, 3, 4] and a[1] != a[4]
    for step in a:
        assert b[step] == pytest.approx(a[step], rel=1e-4), step
    wa = load_file(Path(ref["adapter"]) / "adapter_model.safetensors")
    wb = load_file(Path(got["adapter"]) / "adapter_model.safetensors")
    assert wa.keys() == wb.keys()
    worst = max(((wb[k] - w).norm() / w.norm()).item() for k, w in wa.items() if w.norm() > 0)
    assert worst < 1e-3
