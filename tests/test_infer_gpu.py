"""task=infer on a GPU with a random-weight Gemma 3 4B (text-only, as `model=gemma3_4b` loads it) at its real
width with two layers (helpers.shapes.GEMMA3_4B): bf16, bitsandbytes 8-bit and 4-bit, and a max_memory that forces
a GPU + CPU split; each case's bytes on the GPU are its dtype's or quant's bytes per parameter.

Run on a machine with a CUDA GPU (the first run also builds the random model into the cache, so later runs time
loading from it):  GEMMA_RUN_TEST_CACHE=/tmp/gr-cache python -m pytest tests/test_infer_gpu.py -m gpu -s -q
It prints load time, tokens/s, time to first token and memory per device for each case.
"""

from __future__ import annotations

import gc
import json

import pytest
from helpers.run_if import RunIf
from helpers.shapes import GEMMA3_4B, weight_params

PROMPT = "Explain what a transformer is step by step. " * 12  # ~130 tokens with the random model's tokenizer
NEW = 32
CASES = {
    "bf16": ["quant=none", "device_map=auto"],
    "8bit": ["quant=8bit", "device_map=auto"],
    "4bit-nf4": ["quant=4bit", "quant.infer_as=keep", "device_map=auto"],
    "4bit": ["quant=4bit", "device_map=auto"],  # an inference run on one GPU: int4 (gemma_run.quant.infer_format)
    # 1.5 GiB on GPU 0: the embedding (1.25 GiB) there, the layers (0.35 GiB) on the CPU.
    "bf16 split gpu+cpu": ["quant=none", "device_map=auto", "+device_map.max_memory.0=1.5GiB",
                           "+device_map.max_memory.cpu=100GiB"],
}
ROWS: dict[str, dict] = {}


def _gib(n: int) -> str:
    return f"{n / 2**30:.2f}"


@pytest.fixture(scope="module", autouse=True)
def table():
    yield
    if not ROWS:
        return
    head = f"{'case':<20} {'load s':>7} {'tok/s':>7} {'ttft s':>7}  params GiB per device      peak GiB per device"
    print("\n\ngemma3_4b, 2 layers (random weights, text-only), prompt ~130 tokens +", NEW, "new, batch 1, greedy")
    print(head)
    for name, r in ROWS.items():
        params = " ".join(f"{d}={_gib(b)}" for d, b in r["bytes_per_device"].items())
        peak = " ".join(f"{d}={_gib(b)}" for d, b in r["peak_memory_bytes"].items())
        print(f"{name:<20} {r['load_seconds']:>7.1f} {r['tokens_per_second']:>7.1f} "
              f"{r['time_to_first_token_s']:>7.3f}  {params:<26} {peak}")
    print(json.dumps(ROWS, indent=1, default=str))


def _overrides(case: str) -> list[str]:
    return [*GEMMA3_4B, f"prompt='{PROMPT}'", f"generation.max_new_tokens={NEW}",
            "generation.stream=false", *CASES[case]]


@pytest.fixture(scope="module")
def built(cache_dir, tmp_path_factory):
    """Build the random model into the cache first, so no case's load time includes the build."""
    import time

    from gemma_run import compose
    from gemma_run.loading import checkpoint

    cfg = compose([f"cache_dir={cache_dir}", *_overrides("bf16")])
    start = time.perf_counter()
    path = checkpoint.resolve(cfg.model, cfg.cache_dir)
    print(f"\nrandom gemma3_4b (2 layers) ready in {time.perf_counter() - start:.1f} s: {path}")
    # One short untimed run first, so CUDA/cuBLAS start-up is not counted in the first case's figures.
    from gemma_run import run

    run(compose([f"cache_dir={cache_dir}", *_overrides("bf16"), "generation.max_new_tokens=4"]),
        tmp_path_factory.mktemp("warmup"))
    return path


@RunIf(gpus=1, bnb=True)
@pytest.mark.parametrize("case", [pytest.param(c, marks=RunIf(torchao=True)) if c == "4bit" else c for c in CASES])
def test_gemma3_4b_quant_and_split(compose_cfg, built, tmp_path, case):
    import torch

    from gemma_run import run

    cfg = compose_cfg(_overrides(case))
    try:
        result = run(cfg, tmp_path)
    finally:
        gc.collect()
        torch.cuda.empty_cache()
    line = json.loads((tmp_path / "generations.jsonl").read_text().splitlines()[0])
    assert line["new_tokens"] > 0 and result["status"] == "ok"
    assert result["load_kind"] == "causal_lm"  # random gemma3_4b builds the language model alone
    ROWS[case] = {k: result[k] for k in ("load_seconds", "tokens_per_second", "time_to_first_token_s",
                                         "bytes_per_device", "peak_memory_bytes", "dtype", "input_device")}
    on_gpu = result["bytes_per_device"].get("cuda:0", 0)
    table, linear = weight_params(cfg)  # 671M and 189M parameters; the 262k x 2560 table stays bf16 in every case
    if case == "bf16":
        assert 2 * (table + linear) <= on_gpu < 1.01 * 2 * (table + linear)
        assert "cpu" not in result["bytes_per_device"]
    elif case == "8bit":  # Linear weights at 1 byte (+ a scale per row)
        assert 2 * table + linear <= on_gpu < 2 * table + 1.05 * linear
    elif case == "4bit-nf4":  # Linear weights at half a byte (+ a scale per block)
        assert 2 * table + 0.5 * linear <= on_gpu < 2 * table + 0.6 * linear
        assert "quant_loaded" not in result
    elif case == "4bit":  # int4: half a byte + a scale and zero per 128, q/k/v/gate/up inputs padded 2560 -> 3072
        assert result["quant_loaded"]["format"] == "int4"
        assert 2 * table + 0.5 * linear <= on_gpu < 2 * table + 0.7 * linear
    else:
        assert 2 * table <= on_gpu <= 1.5 * 2**30 and result["bytes_per_device"]["cpu"] >= 2 * linear
        assert result["input_device"].startswith(("cuda", "cpu"))


@RunIf(gpus=1, bnb=True, torchao=True)
def test_quant_4bit_infers_as_quant_int4_does(compose_cfg, built, tmp_path):
    """quant=4bit in an inference run on one GPU loads int4: its greedy tokens are quant=int4's, token for token."""
    from gemma_run import run

    texts = {}
    for name, quant in (("4bit", ["quant=4bit"]), ("int4", ["quant=int4"])):
        result = run(compose_cfg([*_overrides("bf16"), *quant]), tmp_path / name)
        assert result["status"] == "ok"
        texts[name] = json.loads((tmp_path / name / "generations.jsonl").read_text().splitlines()[0])["completion"]
        if name == "4bit":
            assert result["quant_loaded"]["format"] == "int4", result["quant_loaded"]
    assert texts["4bit"] == texts["int4"] and texts["4bit"]


@RunIf(gpus=1)
def test_auto_on_a_gpu_too_small_for_the_model_loads_as_the_plan_places_it(compose_cfg, built, tmp_path):
    """device_map=auto with no max_memory on a GPU whose free memory holds about 60% of the model beside what the
    plan reserves: the loaded model's device map is the memory plan's (not accelerate's, which fills the GPU with
    weights and leaves no room for the KV cache and activations), and it generates on that split."""
    import torch

    from gemma_run import run
    from gemma_run.loading import load
    from gemma_run.planning import inputs
    from gemma_run.planning.plan import make_plan

    overrides = _overrides("bf16")
    free = torch.cuda.mem_get_info(0)[0]

    def planned_on(size: int) -> dict:
        return make_plan(inputs.from_cfg(compose_cfg([*overrides, f"plan.gpus=[{size}]"]), "infer")[0])

    gpu = planned_on(free)["devices"]["cuda:0"]
    # free memory for the reserve and a part of the model, that part found with the plan itself (the 262k x 2560
    # embedding is most of this 2-layer model, and GPU 0 keeps room for the next unit beside it)
    for fraction in (0.95, 0.9, 0.85, 0.8, 0.7, 0.6):
        room = gpu["overhead"] + gpu["activations"] + int(fraction * (gpu["weights"] + gpu["kv_cache"]))
        if {"0", "cpu"} <= set(planned_on(room)["device_map"].values()):
            break
    blocker = torch.empty((free - room) // 2**21 * 2**21, dtype=torch.uint8, device="cuda")  # whole 2 MiB blocks
    loaded = None
    try:
        cfg = compose_cfg(overrides)
        plan = make_plan(inputs.from_cfg(cfg, "infer")[0])
        assert plan["fits"] and {"0", "cpu"} <= set(plan["device_map"].values()), plan["placement"]
        loaded = load(cfg)
        placed = {name: str(dev) for name, dev in loaded.model.hf_device_map.items()}
        assert placed == plan["device_map"]
        assert loaded.bytes_per_device["cuda:0"] <= 1.001 * plan["devices"]["cuda:0"]["weights"]  # + small buffers
        loaded = None
        gc.collect()
        result = run(cfg, tmp_path)  # the whole run on that split: load, generate, report
        assert result["status"] == "ok" and result["new_tokens"] > 0
        assert set(result["bytes_per_device"]) == {"cuda:0", "cpu"}
    finally:
        del blocker, loaded
        gc.collect()
        torch.cuda.empty_cache()
