"""model.random_storage=memory: random-weight models built in memory, unit by unit while the loader reads them,
with only config + tokenizer on disk; auto picks memory for checkpoints too big for the disk.

The in-memory build is the model a checkpoint of the same weights loads (same quantized tensors, bytes,
quantizer attributes, greedy tokens); its weights follow the model's init and its seed; the load's peak is the
quantized model plus one unit (a decoder layer) in the build dtype, which the preflight plans.

GPU (random Gemma 3 4B/27B at their real width and part of their depth built in memory, bf16 / bitsandbytes 4-bit /
torchao int4, bytes per device, peak; the published depths: bench/gpu_suite.sh build):
    GEMMA_RUN_TEST_CACHE=/tmp/gr-cache python -m pytest tests/test_random_memory.py -m gpu -s -q
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from helpers.run_if import RunIf
from helpers.runs import REPO
from helpers.shapes import depth, weight_params

QUANTS = {"none": ["quant=none"], "4bit": ["quant=4bit"], "8bit": ["quant=8bit"],
          "int4": ["quant=int4", "quant.group_size=64"]}
# tiny_gemma3 made wider and deeper (63.2M parameters, 16 layers): a build whose whole model (253 MB in the fp32 a
# model this size is built in) dwarfs one layer (15.7 MB) and the quantized model (32 MB)
MEDIUM = ["model.config.hidden_size=512", "model.config.intermediate_size=2048", "model.config.num_hidden_layers=16",
          "model.config.num_attention_heads=4", "model.config.num_key_value_heads=2", "model.config.head_dim=128",
          "model.config.query_pre_attn_scalar=128", "model.config.layer_types=null"]


def _tokens(loaded, n: int = 8):
    ids = loaded.tokenizer("Hello there, how are you", return_tensors="pt").to(loaded.input_device)
    return loaded.model.generate(**ids, max_new_tokens=n, do_sample=False)[0].tolist()


def _plain(state: dict) -> dict:
    """The state dict's plain tensors (bitsandbytes' entries include non-tensor quant-state keys)."""
    import torch

    return {k: v for k, v in state.items() if type(v) is torch.Tensor or isinstance(v, torch.nn.Parameter)}


@pytest.mark.parametrize("quant", list(QUANTS))
def test_memory_build_is_the_model_a_checkpoint_of_its_weights_loads(compose_cfg, tmp_path, quant: str) -> None:
    """Quantized unit by unit as the loader reads the tensors, the model equals the one loaded (and quantized
    tensor by tensor) from a checkpoint of the same weights."""
    import torch

    from gemma_run.loading import load, random_weights

    base = ["device_map=cpu", "model.dtype=bfloat16"]
    weights = load(compose_cfg([*base, "quant=none", "model.random_storage=memory"]))
    weights.model.save_pretrained(tmp_path / "ckpt", safe_serialization=True)
    weights.tokenizer.save_pretrained(tmp_path / "ckpt")
    mem = load(compose_cfg([*base, *QUANTS[quant], "model.random_storage=memory"]))
    ckpt = load(compose_cfg([*base, *QUANTS[quant], "model.weights=pretrained", f"model.path={tmp_path / 'ckpt'}"]))
    assert random_weights.in_memory(mem.path) and not list(mem.path.glob("*.safetensors"))
    assert mem.bytes_per_device == ckpt.bytes_per_device and set(mem.bytes_per_device) == {"cpu"}
    assert type(mem.model) is type(ckpt.model)
    assert type(getattr(mem.model, "hf_quantizer", None)) is type(getattr(ckpt.model, "hf_quantizer", None))
    for name in ("is_quantized", "is_loaded_in_4bit", "is_loaded_in_8bit", "quantization_method"):
        assert getattr(mem.model, name, None) == getattr(ckpt.model, name, None), name
    a, b = mem.model.state_dict(), ckpt.model.state_dict()
    assert a.keys() == b.keys()
    for key in _plain(a):
        assert torch.equal(a[key], b[key]), key
    assert mem.model.lm_head.weight is mem.model.model.embed_tokens.weight  # tied as the checkpoint load ties
    assert mem.model.generation_config.eos_token_id == 1
    assert _tokens(mem) == _tokens(ckpt)


def test_random_weights_follow_the_model_init_and_the_seed(compose_cfg) -> None:
    import torch

    from gemma_run.loading import load

    base = ["device_map=cpu", "model.dtype=float32", "quant=none", "model.random_storage=memory"]
    model = load(compose_cfg(base)).model
    linears = [m.weight for m in model.modules() if isinstance(m, torch.nn.Linear) and m is not model.lm_head]
    assert len(linears) == 2 * 7
    for w in linears:  # Gemma 3's initializer_range
        assert abs(w.std().item() - 0.02) < 0.004 and abs(w.mean().item()) < 0.002
    norms = [m.weight for n, m in model.named_modules() if type(m).__name__ == "Gemma3RMSNorm"]
    assert norms and all(torch.count_nonzero(w) == 0 for w in norms)  # scaled by (1 + weight): zero is identity
    table = model.model.embed_tokens.weight
    assert torch.count_nonzero(table[0]) == 0 and abs(table[1:].std().item() - 0.02) < 0.002  # row 0: padding
    again = load(compose_cfg(base)).model.state_dict()
    other = load(compose_cfg([*base, "model.seed=1"])).model.state_dict()
    state = model.state_dict()
    assert all(torch.equal(state[k], again[k]) for k in state)
    assert not torch.equal(state["model.layers.0.mlp.up_proj.weight"], other["model.layers.0.mlp.up_proj.weight"])


def test_each_unit_is_drawn_from_its_own_seed_whatever_the_read_order(compose_cfg) -> None:
    import torch
    from omegaconf import OmegaConf
    from transformers import AutoModelForCausalLM

    from gemma_run.loading import random_memory, random_weights

    arch = random_weights.architecture_config(OmegaConf.to_container(compose_cfg().model.config), True)
    with torch.device("meta"):
        skeleton = AutoModelForCausalLM.from_config(arch, dtype=torch.float32)
    forward = random_memory.RandomSource(skeleton, 0, "cpu", torch.float32)
    backward = random_memory.RandomSource(skeleton, 0, "cpu", torch.float32)
    keys = forward.keys
    assert "lm_head.weight" not in keys and "model.embed_tokens.weight" in keys  # tied: saved once
    a = {k: forward.take(k) for k in keys}
    b = {k: backward.take(k) for k in reversed(keys)}
    assert all(torch.equal(a[k], b[k]) for k in keys)
    assert not forward.waiting and forward.units_made == len({forward.unit_of[k] for k in keys})
    assert forward.largest_unit_bytes() == 4 * sum(t.numel() for t in skeleton.model.layers[0].parameters())


@pytest.mark.slow
def test_memory_build_peaks_at_the_quantized_model_plus_one_layer(tmp_path) -> None:
    """A 4-bit in-memory build on the CPU, measured by bench/random_build_peak.py in a fresh process: its peak is
    the quantized model plus about one fp32 layer, not the whole model first built in fp32 (253 MB here)."""
    out = subprocess.run([sys.executable, str(REPO / "bench" / "random_build_peak.py"), "--model", "tiny_gemma3",
                          "--quant", "4bit", "--json", "--set", f"cache_dir={tmp_path}", "model.dtype=bfloat16",
                          *MEDIUM], capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].startswith("| model | quant | device | planned GiB | planned load GiB | peak GiB")
    row = json.loads(lines[-1])
    assert row["params"] == 63_214_080 and row["device"] == "cpu"
    whole = 4 * row["params"]  # the model in fp32, as a model of this size is built
    layer = 4 * 3_932_160  # one decoder layer's Linear weights in fp32
    assert layer <= row["build"] < 1.01 * layer  # planned: one layer (+ its norms, cast to bf16 too)
    assert row["loaded"] < 0.15 * whole
    assert row["peak"] < 0.5 * whole, row


def test_preflight_plans_the_build_of_27b_4bit_one_layer_beyond_the_weights(compose_cfg) -> None:
    from gemma_run.planning import inputs
    from gemma_run.planning.plan import make_plan

    def plan(*extra: str) -> dict:
        p, _ = inputs.from_cfg(compose_cfg(["model=gemma3_27b", "quant=4bit", "plan.gpus=[24GiB]", *extra]), "infer")
        return make_plan(p)

    random, real = plan("model.weights=random"), plan("model.weights=pretrained")
    layer = 2 * (5376 * 4096 * 2 + 5376 * 2048 * 2 + 3 * 5376 * 21504)  # q, o, k, v, gate, up, down in bf16
    assert random["random_build_bytes"] == layer and real["random_build_bytes"] == 0
    gpu, ref = random["devices"]["cuda:0"], real["devices"]["cuda:0"]
    assert "random_build" not in ref
    # the transient comes while the weights load, before the cache and activations: the peak is the larger
    assert gpu["random_build"] == layer - gpu["kv_cache"] - gpu["activations"] > 0
    assert gpu["total"] == gpu["weights"] + gpu["overhead"] + layer == ref["total"] + gpu["random_build"]
    assert random["fits"]


@pytest.mark.slow
def test_task_plan_shows_the_random_build(cli) -> None:
    out = cli("task=plan", "model=gemma3_27b", "model.weights=random", "quant=4bit", "quant.infer_as=keep",
              "plan.gpus=[24GiB]")
    assert out.returncode == 0, out.stderr
    header = next(line for line in out.stdout.splitlines() if line.startswith("device"))
    row = next(line for line in out.stdout.splitlines() if line.startswith("cuda:0"))
    assert header.split()[:7] == ["device", "weights", "kv_cache", "activations", "overhead", "random_build", "total"]
    assert row.split()[5] == "0.34" and "fits: yes" in out.stdout


def test_auto_storage_is_memory_for_27b_and_disk_for_the_tiny_model(compose_cfg, tmp_path) -> None:
    from omegaconf import OmegaConf

    from gemma_run.loading import random_weights

    big = compose_cfg(["model=gemma3_27b", "model.weights=random"]).model
    arch = random_weights.architecture_config(OmegaConf.to_container(big.config), True)
    assert 53e9 < random_weights.checkpoint_bytes(arch) < 55e9  # 27.0B parameters in bf16
    assert random_weights.storage(big, arch, tmp_path / "random" / "x") == "memory"
    assert random_weights.builds_in_memory(big, tmp_path)
    tiny = compose_cfg().model
    tiny_arch = random_weights.architecture_config(OmegaConf.to_container(tiny.config), True)
    assert random_weights.storage(tiny, tiny_arch, tmp_path / "random" / "y") == "disk"
    assert not random_weights.builds_in_memory(tiny, tmp_path)
    big.random_storage = "disk"  # an explicit choice wins
    assert random_weights.storage(big, arch, tmp_path / "random" / "x") == "disk"
    assert not random_weights.builds_in_memory(big, tmp_path)


def test_auto_keeps_using_a_checkpoint_already_built(compose_cfg) -> None:
    from gemma_run.loading import checkpoint, random_weights

    cfg = compose_cfg(["model.random_storage=disk"])
    built = checkpoint.resolve(cfg.model, cfg.cache_dir)
    auto = compose_cfg(["model.random_storage=auto"])
    assert checkpoint.resolve(auto.model, auto.cache_dir) == built and not random_weights.in_memory(built)


def test_memory_mode_through_the_cli(cli) -> None:
    out = cli("task=infer", "model.random_storage=memory", "quant=int4", "quant.group_size=64", "prompt=Hello",
              "generation.max_new_tokens=4")
    assert out.returncode == 0, out.stderr
    assert "built random tiny_gemma3 in memory on cpu (float32, unit by unit: 4 units" in out.stderr


# The GPU builds: each model at its real width and two depths. The load's transient is one unit (a decoder layer
# or the embedding) in bf16 whatever the depth, so the peak's excess over the loaded model stays put from the
# shallow to the deep build (the whole model made first in bf16 would add a bf16 layer per layer, as would any
# per-layer leftover in part); both builds also stay under the published depth's bound, the quantized model + 2
# GiB (4B) or 4 GiB (27B): the embedding's unit, one layer and the quantizer's scratch. The deep ones (18 x 0.18,
# 8 x 0.77 GiB of bf16 layers) are deep enough to break that bound if built whole.
DEPTHS_4B, DEPTHS_27B = (2, 18), (2, 8)


def _gpu_case(compose_cfg, overrides: list[str]) -> dict:
    import time

    import torch

    from gemma_run.loading import load

    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()  # what earlier tests left, not this load's
    start = time.perf_counter()
    cfg = compose_cfg(["model.random_storage=memory", "device_map=auto", *overrides])
    loaded = load(cfg)
    seconds = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated() - before
    tokens = _tokens(loaded, 8)
    row = {"load_s": round(seconds, 1), "bytes_per_device": loaded.bytes_per_device, "peak": peak,
           "peak_gib": round(peak / 2**30, 2), "tokens": len(tokens), "params": weight_params(cfg)}
    print(f"\n{' '.join(overrides)}: {row}")
    assert set(loaded.bytes_per_device) == {"cuda:0"}
    del loaded
    torch.cuda.empty_cache()
    return row


def _check_bytes(row: dict, quant: list[str]) -> int:
    """The loaded bytes as the quant stores them (the embedding table in bf16 in every case); returns them."""
    total = sum(row["bytes_per_device"].values())
    table, linear = row["params"]
    if quant == ["quant=none"]:
        assert 2 * (table + linear) <= total < 1.01 * 2 * (table + linear)
    else:  # 4-bit Linear weights with their scales (int4: and tinygemm's padding), well under bf16's 2 bytes
        assert 2 * table + 0.5 * linear <= total < 2 * table + 0.75 * linear
    return total


def _check_builds(compose_cfg, model: str, depths: tuple[int, int], quant: list[str], bound_gib: float) -> None:
    rows = [_gpu_case(compose_cfg, [*depth(model, n), *quant]) for n in depths]
    excess = []
    for row in rows:
        total = _check_bytes(row, quant)
        assert row["peak"] < total + bound_gib * 2**30, row
        excess.append(row["peak"] - total)
    layer = 2 * (rows[1]["params"][1] - rows[0]["params"][1]) // (depths[1] - depths[0])  # a layer's Linears, bf16
    assert excess[1] - excess[0] < 0.1 * layer * (depths[1] - depths[0]), (excess, layer)


@RunIf(gpus=1)
@pytest.mark.parametrize("quant", [["quant=none"], pytest.param(["quant=4bit"], marks=RunIf(bnb=True)),
                                   pytest.param(["quant=int4"], marks=RunIf(torchao=True))])
def test_gpu_random_4b_in_memory(compose_cfg, quant: list[str]) -> None:
    _check_builds(compose_cfg, "gemma3_4b", DEPTHS_4B, quant, bound_gib=2)


@RunIf(gpus=1)
@pytest.mark.parametrize("quant", [pytest.param(["quant=4bit"], marks=RunIf(bnb=True)),
                                   pytest.param(["quant=int4"], marks=RunIf(torchao=True))])
def test_gpu_random_27b_quantized_in_memory_on_one_gpu(compose_cfg, quant: list[str]) -> None:
    """27B's layers in bf16 (0.77 GiB each) are never built whole: quantized unit by unit, the load's peak stays
    within a few GiB of the quantized model (one decoder layer in bf16 and the quantizer's scratch), at any depth."""
    _check_builds(compose_cfg, "gemma3_27b", DEPTHS_27B, quant, bound_gib=4)
