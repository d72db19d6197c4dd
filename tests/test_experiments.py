"""Experiment presets (gemma_run/conf/experiment/**): every one composes into the run it names, its documented baseline
override composes, and a benchmark preset runs end to end on the tiny model (CPU)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

EXPERIMENTS = Path(__file__).resolve().parents[1] / "gemma_run" / "conf" / "experiment"
PRESETS = sorted(str(p.relative_to(EXPERIMENTS).with_suffix("")) for p in EXPERIMENTS.rglob("*.yaml"))

# preset -> (task, model, quant): what docs/benchmarks.md says each one measures
EXPECTED = {
    "bench/decode_4b": ("bench", "gemma3_4b", "none"),
    "bench/decode_27b_int4": ("bench", "gemma3_27b", "int4"),
    "bench/decode_27b_nf4": ("bench", "gemma3_27b", "4bit"),
    "bench/train_4b_lora": ("bench_train", "gemma3_4b", "none"),
    "bench/train_4b_lora_baseline": ("bench_train", "gemma3_4b", "none"),
    "bench/train_4b_qlora": ("bench_train", "gemma3_4b", "4bit"),
    "bench/train_27b_qlora": ("bench_train", "gemma3_27b", "4bit"),
    "bench/decode_gemma4_31b_int4": ("bench", "gemma4_31b", "int4"),
    "bench/decode_gemma4_26b_a4b": ("bench", "gemma4_26b_a4b", "none"),
    "bench/train_gemma4_e4b_lora": ("bench_train", "gemma4_e4b", "none"),
    "bench/train_gemma4_31b_qlora": ("bench_train", "gemma4_31b", "4bit"),
}
SMALL_DECODE = ["model=tiny_gemma3", "task.prompt_tokens=[16]", "task.new_tokens=[4]", "task.batch_sizes=[1]",
                "task.probe_bytes=32MiB"]
SMALL_TRAIN = ["model=tiny_gemma3", "train.max_seq_length=64", "train.per_device_batch_size=2", "task.steps=1",
               "task.warmup_steps=1"]


def test_every_preset_is_listed() -> None:
    assert PRESETS == sorted(EXPECTED), "a preset was added or removed: update EXPECTED and docs/benchmarks.md"


@pytest.mark.parametrize("name", PRESETS)
def test_preset_composes_and_validates(compose_cfg, name: str) -> None:
    from gemma_run.app.validation import validate

    cfg = compose_cfg([f"+experiment={name}"])
    assert (cfg.task.name, cfg.model.name, cfg.quant.name) == EXPECTED[name]
    assert cfg.model.weights.name == "random"  # benchmarks need no download
    assert "experiment" not in cfg  # `# @package _global_`: the preset sets the run's own keys
    assert validate(cfg) == []


def test_decode_baselines_are_generate(compose_cfg) -> None:
    for name in ("bench/decode_4b", "bench/decode_27b_nf4"):
        cfg = compose_cfg([f"+experiment={name}", "generation.engine=hf", "task.batch_sizes=[1]"])
        assert cfg.generation.engine.value == "hf" and list(cfg.task.batch_sizes) == [1]
    nf4 = compose_cfg(["+experiment=bench/decode_27b_nf4"])
    assert nf4.generation.compile is False  # the engine task=infer picks for a 128-token answer


def test_training_presets_keep_the_measured_shape(compose_cfg) -> None:
    lora = compose_cfg(["+experiment=bench/train_4b_lora"])
    base = compose_cfg(["+experiment=bench/train_4b_lora_baseline"])
    qlora = compose_cfg(["+experiment=bench/train_4b_qlora"])
    for cfg in (lora, base, qlora):
        assert (cfg.train.max_seq_length, cfg.train.per_device_batch_size, cfg.lora.r) == (2048, 4, 16)
        assert (cfg.task.warmup_steps, cfg.task.steps) == (2, 10)
    assert lora.train.gpu_memory_cap == qlora.train.gpu_memory_cap == "20GiB" and base.train.gpu_memory_cap is None
    assert (base.train.attn_implementation, base.train.loss_kernel.value, base.deepspeed.name) == (
        "eager", "none", "none")
    assert base.lora.fp32_embeddings and base.train.compile_layers is False
    big = compose_cfg(["+experiment=bench/train_27b_qlora"])
    assert (big.train.max_seq_length, big.train.per_device_batch_size, big.train.gpu_memory_cap) == (2048, 1, "24GiB")
    g4 = compose_cfg(["+experiment=bench/train_gemma4_e4b_lora"])
    assert (g4.train.max_seq_length, g4.train.per_device_batch_size, g4.lora.r, g4.train.gpu_memory_cap) == (
        2048, 4, 16, "24GiB")
    g4_base = compose_cfg(["+experiment=bench/train_4b_lora_baseline", "model=gemma4_e4b"])
    assert (g4_base.model.name, g4_base.train.loss_kernel.value, g4_base.train.gpu_memory_cap) == (
        "gemma4_e4b", "none", None)
    g4_big = compose_cfg(["+experiment=bench/train_gemma4_31b_qlora"])
    assert (g4_big.train.max_seq_length, g4_big.train.per_device_batch_size, g4_big.train.gpu_memory_cap) == (
        2048, 1, "32GiB")


def test_unknown_preset_is_refused(cli) -> None:
    proc = cli("+experiment=bench/nope", "--cfg", "job")
    assert proc.returncode != 0
    assert "experiment/bench/nope" in proc.stderr.splitlines()[0]


@pytest.mark.slow
def test_decode_preset_runs_on_the_tiny_model(cli, tmp_path: Path) -> None:
    from helpers.runs import run_dirs

    proc = cli("+experiment=bench/decode_4b", *SMALL_DECODE, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.startswith("bench: tiny_gemma3 quant=none")
    [run_dir] = run_dirs(tmp_path)
    rows = json.loads((run_dir / "bench.json").read_text())["rows"]
    assert [(r["prompt_tokens"], r["new_tokens"], r["batch"]) for r in rows] == [(16, 4, 1)]
    assert rows[0]["decode_tokens_per_second"] > 0 and rows[0]["limit_fraction"] > 0


@pytest.mark.slow
def test_training_baseline_preset_runs_on_the_tiny_model(cli, tmp_path: Path) -> None:
    from helpers.runs import run_dirs

    proc = cli("+experiment=bench/train_4b_lora_baseline", *SMALL_TRAIN, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    [run_dir] = run_dirs(tmp_path)
    row = json.loads((run_dir / "bench_train.json").read_text())
    assert (row["model"], row["attn_implementation"], row["loss_kernel"], row["deepspeed_stage"]) == (
        "tiny_gemma3", "eager", "none", 0)
    assert row["tokens_per_second"] > 0 and row["timed_steps"] == 1
