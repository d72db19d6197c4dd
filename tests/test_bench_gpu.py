"""task=bench on a GPU: random-weight Gemma 3 4B (text-only) in bf16 and bitsandbytes nf4, prompt 128 + 128 new
tokens, batch 1 and 8, HF generate with the default (dynamic) cache: the reference the fast engine is compared to.

Run on a machine with a CUDA GPU (the first run also builds the random 4B into the cache, so later runs time
loading from it):  GEMMA_RUN_TEST_CACHE=/tmp/gr-cache python -m pytest tests/test_bench_gpu.py -m gpu -s -q
It prints each run's table and one comparison at the end.
"""

from __future__ import annotations

import gc
import json

import pytest
from helpers.run_if import RunIf

CASES = {"bf16": "quant=none", "4bit": "quant=4bit"}
BASE = ["task=bench", "model=gemma3_4b", "model.weights=random", "device_map=auto", "task.prompt_tokens=[128]",
        "task.new_tokens=[128]", "task.batch_sizes=[1,8]"]
ROWS: dict[str, list[dict]] = {}


@pytest.fixture(scope="module", autouse=True)
def table():
    yield
    if not ROWS:
        return
    print("\n\ngemma3_4b (random weights), prompt 128 + 128 new, greedy, HF generate (dynamic cache)")
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

    try:
        result = run(compose_cfg([*BASE, CASES[case]]), tmp_path)
    finally:
        gc.collect()
        torch.cuda.empty_cache()
    data = json.loads((tmp_path / "bench.json").read_text())
    rows = data["rows"]
    ROWS[case] = rows
    assert result["status"] == "ok" and [r["batch"] for r in rows] == [1, 8]
    assert data["bandwidth"]["device"].startswith("cuda") and data["bandwidth"]["bytes_per_second"] > 3e11
    low, high = (7.0e9, 8.5e9) if case == "bf16" else (2.5e9, 3.6e9)  # 3.9B params at 2 bytes; nf4 + bf16 embedding
    for r in rows:
        assert low < r["weights_bytes"] < high
        assert 0 < r["limit_fraction"] <= 1.0 and r["time_to_first_token_s"] > 0
        assert r["peak_memory_bytes"]["cuda:0"] > r["weights_bytes"] * 0.9
    assert rows[1]["decode_throughput"] > rows[0]["decode_throughput"]  # 8 sequences share each weight read
