"""task=bench on the tiny random-weight Gemma 3 (CPU): bench.json rows with positive numbers and a fraction of
the bandwidth limit, a `-m quant=none,8bit` sweep tabulated into one summary, and the generation-path switch
(static KV cache: the same greedy tokens as the dynamic cache)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from gemma_run import run
from gemma_run.app.errors import GemmaRunError
from gemma_run.app.validation import validate
from gemma_run.infer import generate as gen

SMALL = ["task=bench", "task.prompt_tokens=[20]", "task.new_tokens=[6]", "task.batch_sizes=[1,3]",
         "task.probe_bytes=32MiB"]


def test_bench_rows_in_bench_json(compose_cfg, tmp_path: Path, capsys) -> None:
    result = run(compose_cfg(SMALL), tmp_path)
    data = json.loads((tmp_path / "bench.json").read_text())
    rows = data["rows"]
    assert [(r["prompt_tokens"], r["new_tokens"], r["batch"]) for r in rows] == [(20, 6, 1), (20, 6, 3)]
    assert data["bandwidth"]["bytes_per_second"] > 1e8 and data["bandwidth"]["device"] == "cpu"
    assert data["environment"]["torch"] and data["generation"]["cache_implementation"] is None
    for r in rows:
        for key in ("time_to_first_token_s", "decode_tokens_per_second", "total_tokens_per_second",
                    "prefill_tokens_per_second", "warmup_seconds", "weights_bytes", "kv_read_bytes"):
            assert r[key] > 0, key
        assert 0 < r["limit_fraction"] <= 1.5
        assert r["decode_throughput"] == pytest.approx(r["decode_tokens_per_second"] * r["batch"], rel=1e-3)
        assert r["peak_memory_bytes"]["cpu"] > 0
        assert r["gpu_state"] is None  # clocks are read on CUDA runs only
    # the tiny model in fp32: its parameters, 4 bytes each, are what a decode step reads (plus the KV cache);
    # the planner rounds each tensor up to the CUDA allocator's 512 bytes, ~1.4% on a model this small
    assert rows[0]["weights_bytes"] == pytest.approx(_param_bytes(compose_cfg), rel=0.02)
    # 3 sequences read 3 KV caches: 1 KV head x 32 dims x 2 (K, V) x 4 bytes per token, layer 0 capped at 16
    # for the decode steps' contexts 21..25 (mean 23): layer 0 (sliding) keeps 16 tokens, layer 1 all of them
    assert rows[0]["kv_read_bytes"] == 2 * 32 * 4 * (16 + 23)
    assert rows[1]["kv_read_bytes"] == 3 * rows[0]["kv_read_bytes"]
    assert result["decode_tokens_per_second"] == rows[0]["decode_tokens_per_second"]
    assert result["limit_fraction"] == rows[0]["limit_fraction"]
    assert "decode tok/s" in capsys.readouterr().out


def _param_bytes(compose_cfg) -> int:
    from gemma_run.loading import load

    model = load(compose_cfg([])).model
    return sum(p.numel() * p.element_size() for p in model.parameters())


def test_bench_sweep_makes_one_comparison_table(cli, tmp_path: Path) -> None:
    proc = cli("-m", *SMALL, "task.batch_sizes=[1]", "quant=none,8bit")
    assert proc.returncode == 0, proc.stderr[-3000:]
    sweep = next(tmp_path.glob("multirun/*/*"))
    rows = list(csv.DictReader((sweep / "summary.csv").open()))
    assert [r["quant"] for r in rows] == ["none", "8bit"] and all(r["status"] == "ok" for r in rows)
    assert all(float(r["decode_tokens_per_second"]) > 0 and 0 < float(r["limit_fraction"]) <= 1.5 for r in rows)
    assert "decode_tokens_per_second" in (sweep / "summary.md").read_text()


def test_static_cache_gives_the_dynamic_caches_greedy_tokens(compose_cfg) -> None:
    """Prompts longer than the tiny model's sliding window (16), left-padded in one batch: the static cache's
    sliding and global layers must reproduce the dynamic cache token for token."""
    import torch

    from gemma_run.loading import load

    loaded = load(compose_cfg([]))
    model, tok = loaded.model, loaded.tokenizer
    tok.padding_side = "left"
    ids = [tok("the cat sat on the mat and looked at the dog " * 3)["input_ids"], tok("hello there")["input_ids"]]
    outs = {}
    for cache in ("null", "static"):
        cfg = compose_cfg(["generation.max_new_tokens=24", f"generation.cache_implementation={cache}"])
        kwargs = gen.generation_kwargs(cfg.generation, model, tok, chat=False)
        assert ("cache_implementation" in kwargs) == (cache == "static")
        inputs = tok.pad({"input_ids": ids}, padding=True, return_tensors="pt")
        with torch.inference_mode():
            outs[cache] = model.generate(**inputs, **kwargs, min_new_tokens=24)
    assert max(len(i) for i in ids) > 16
    assert outs["static"].shape[1] == max(len(i) for i in ids) + 24
    assert torch.equal(outs["null"], outs["static"])


def test_compile_switch_maps_to_transformers_keys(compose_cfg) -> None:
    from transformers import CompileConfig

    static = gen.cache_kwargs(compose_cfg(["generation.cache_implementation=static"]).generation)
    assert static == {"cache_implementation": "static", "disable_compile": True}
    compiled = gen.cache_kwargs(compose_cfg(["generation.cache_implementation=static",
                                             "generation.compile=true"]).generation)
    assert compiled["cache_implementation"] == "static" and isinstance(compiled["compile_config"], CompileConfig)
    assert gen.cache_kwargs(compose_cfg([]).generation) == {}
    cfg = compose_cfg(["generation.compile=true", "generation.engine=hf"])
    assert any(e.key == "generation.compile" for e in validate(cfg))
    with pytest.raises(GemmaRunError, match="static KV cache"):
        gen.cache_kwargs(cfg.generation)
    # the fast engine has its own static cache: compile=true alone is valid there, cache_implementation is not
    assert not validate(compose_cfg(["generation.compile=true", "generation.engine=fast"]))
    keys = {e.key for e in validate(compose_cfg(["generation.engine=fast", "generation.cache_implementation=static"]))}
    assert "generation.cache_implementation" in keys


def test_bench_config_errors_are_reported_before_loading(compose_cfg) -> None:
    cfg = compose_cfg(["task=bench", "task.batch_sizes=[]", "task.prompt_tokens=[500]", "task.new_tokens=[100]",
                       "task.probe_bytes=lots"])
    keys = {e.key for e in validate(cfg)}
    assert {"task.batch_sizes", "task.prompt_tokens", "task.probe_bytes"} <= keys


def test_gpu_state_reads_nvidia_smi_and_is_none_without_it(tmp_path: Path, monkeypatch) -> None:
    """task=bench records each GPU's clocks, power and throttling after its timed runs (rows from two machines
    can then be told apart); without nvidia-smi (a CPU machine), or when it fails, there is nothing to record."""
    from gemma_run.bench import gpu_state

    smi = tmp_path / "nvidia-smi"
    smi.write_text("#!/bin/sh\n"
                   "echo '0, NVIDIA H100 80GB HBM3, 1755, 1980, 2619, 2619, 402.11, 700.00, 51, 0x0000000000000000'\n")
    smi.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    [gpu] = gpu_state.query()
    assert gpu["clocks.sm"] == "1755" and gpu["clocks.max.sm"] == "1980" and gpu["power.limit"] == "700.00"
    assert gpu["name"] == "NVIDIA H100 80GB HBM3" and gpu["clocks_throttle_reasons.active"] == "0x0000000000000000"
    assert "SM 1755/1980 MHz, memory 2619/2619 MHz" in gpu_state.describe([gpu])
    smi.write_text("#!/bin/sh\necho 'NVIDIA-SMI has failed' >&2\nexit 9\n")
    assert gpu_state.query() is None
    monkeypatch.setenv("PATH", str(tmp_path / "nowhere"))
    assert gpu_state.query() is None and gpu_state.describe(None) == "no nvidia-smi"


def test_the_limit_divides_by_the_clean_devices_copy_and_keeps_the_one_after_loading() -> None:
    """On a GPU the copy is measured before loading (a 27B built and quantized in the process left the copy after
    loading 14% slower while the weights read at the clean rate); the row's limit uses the clean figure, and the
    one after loading stays in bench.json. Without a clean figure for that device (a CPU run), the one after."""
    from gemma_run.tasks.bench import reference_bandwidth

    clean = {"cuda:0": {"device": "cuda:0", "bytes": 2**30, "seconds": 7.14e-4, "bytes_per_second": 3.006e12}}
    after = {"device": "cuda:0", "bytes": 2**30, "seconds": 8.3e-4, "bytes_per_second": 2.587e12}
    bw = reference_bandwidth(clean, after)
    assert bw["bytes_per_second"] == 3.006e12 and bw["when"] == "before loading" and bw["after_loading"] == after
    cpu = {"device": "cpu", "bytes": 2**28, "seconds": 0.05, "bytes_per_second": 1.07e10}
    assert reference_bandwidth(clean, cpu) == cpu and reference_bandwidth({}, after) == after


def test_the_matmul_rate_and_mfu_6n() -> None:
    """The probe behind task=bench_train's mfu_6n counts 2 x size^3 FLOPs a product; mfu_6n is 6 x the matmul
    weights x tokens/s over it (gemma3_4b's 3.88 B at 14,347 tok/s on 780 TFLOP/s: 42.8%)."""
    from gemma_run.bench import matmul_rate
    from gemma_run.training import flops

    r = matmul_rate.measure("cpu", size=256)
    assert r["tflops"] > 0 and abs(r["tflops"] - 2 * 256**3 / r["seconds"] / 1e12) < 1e-9
    assert abs(flops.mfu_6n(3_880_000_000, 14_347, 780.0) - 0.428) < 1e-3
    assert flops.mfu_6n(3_880_000_000, 14_347, None) is None
