"""task=bench on a GPU: random-weight Gemma 3 4B (text-only) at its real width with two layers
(helpers.shapes.GEMMA3_4B) in bf16 and bitsandbytes nf4, prompt 128 + 32 new tokens, batch 1 and 8, the fast
engine with its eager step recorded as a CUDA graph (generation.compile=false: the compiled step is
test_fast_decode_gpu's, and its speed the benchmark suite's): the bench task's rows, bytes and limits. The whole
4B is measured by the benchmark suite (bench/gpu_suite.sh decode: decode_4b).

Run on a machine with a CUDA GPU (the first run also builds the random model into the cache, so later runs time
loading from it):  GEMMA_RUN_TEST_CACHE=/tmp/gr-cache python -m pytest tests/test_bench_gpu.py -m gpu -s -q
It prints each run's table and one comparison at the end.
"""

from __future__ import annotations

import gc
import json

import pytest
from helpers.run_if import RunIf
from helpers.shapes import GEMMA3_4B, weight_params

CASES = {"bf16": ["quant=none"], "4bit": ["quant=4bit", "quant.infer_as=keep"]}  # 4bit kept NF4 (quant.md)
BASE = ["task=bench", *GEMMA3_4B, "device_map=auto", "task.prompt_tokens=[128]", "task.new_tokens=[32]",
        "task.batch_sizes=[1,8]", "generation.compile=false"]
ROWS: dict[str, list[dict]] = {}


@pytest.fixture(scope="module", autouse=True)
def table():
    yield
    if not ROWS:
        return
    print("\n\ngemma3_4b, 2 layers (random weights), prompt 128 + 32 new, greedy, fast engine (eager step, CUDA graph)")
    print(f"{'case':<6} {'batch':>5} {'ttft s':>7} {'decode tok/s':>12} {'x batch':>8} {'limit tok/s':>11} "
          f"{'of limit':>8} {'GB/step':>8} {'peak GiB':>8}")
    for case, rows in ROWS.items():
        for r in rows:
            peak = r["peak_memory_bytes"].get("cuda:0", 0) / 2**30
            print(f"{case:<6} {r['batch']:>5} {r['time_to_first_token_s']:>7.3f} {r['decode_tokens_per_second']:>12.1f}"
                  f" {r['decode_throughput']:>8.1f} {r['limit_tokens_per_second']:>11.1f} {r['limit_fraction']:>8.1%}"
                  f" {r['bytes_per_step'] / 1e9:>8.2f} {peak:>8.2f}")
    print(json.dumps(ROWS, indent=1, default=str))


@RunIf(gpus=1, bnb=True)
@pytest.mark.parametrize("case", list(CASES))
def test_bench_gemma3_4b(compose_cfg, tmp_path, case):
    import torch

    from gemma_run import run

    cfg = compose_cfg([*BASE, *CASES[case]])
    try:
        result = run(cfg, tmp_path)
    finally:
        gc.collect()
        torch.cuda.empty_cache()
    data = json.loads((tmp_path / "bench.json").read_text())
    rows = data["rows"]
    ROWS[case] = rows
    assert result["status"] == "ok" and [r["batch"] for r in rows] == [1, 8]
    assert data["bandwidth"]["device"].startswith("cuda") and data["bandwidth"]["bytes_per_second"] > 3e11
    table, linear = weight_params(cfg)  # 671M and 189M parameters
    bf16 = 2 * (table + linear)
    # bf16: every parameter at 2 bytes; nf4: the Linear weights at half a byte (+ their scales), the table in bf16
    low, high = (0.97 * bf16, 1.03 * bf16) if case == "bf16" else (2 * table + 0.5 * linear, 2 * table + 0.7 * linear)
    for r in rows:
        assert low < r["weights_bytes"] < high
        assert 0 < r["limit_fraction"] <= 1.0 and r["time_to_first_token_s"] > 0
        assert r["peak_memory_bytes"]["cuda:0"] > r["weights_bytes"] * 0.9
    assert rows[1]["decode_throughput"] > rows[0]["decode_throughput"]  # 8 sequences share each weight read
