"""model.random_storage=memory: random-weight models built in memory give the same model as the disk path
(same weights, same bytes, same quantizer attributes, same greedy tokens), with only config + tokenizer on disk;
auto picks memory for checkpoints too big for the disk.

GPU (random Gemma 3 4B/27B built in memory, bf16 / bitsandbytes 4-bit / torchao int4, bytes per device):
    GEMMA_RUN_TEST_CACHE=/tmp/gr-cache python -m pytest tests/test_random_memory.py -m gpu -s -q
"""

from __future__ import annotations

import pytest

QUANTS = {"none": ["quant=none"], "4bit": ["quant=4bit"], "8bit": ["quant=8bit"],
          "int4": ["quant=int4", "quant.group_size=64"]}


def _tokens(loaded, n: int = 8):
    ids = loaded.tokenizer("Hello there, how are you", return_tensors="pt").to(loaded.input_device)
    return loaded.model.generate(**ids, max_new_tokens=n, do_sample=False)[0].tolist()


@pytest.mark.parametrize("quant", list(QUANTS))
def test_memory_build_equals_the_disk_checkpoint(compose_cfg, quant: str) -> None:
    import torch

    from gemma_run.loading import load, random_weights

    base = [*QUANTS[quant], "device_map=cpu", "model.dtype=bfloat16"]
    disk = load(compose_cfg([*base, "model.random_storage=disk"]))
    mem = load(compose_cfg([*base, "model.random_storage=memory"]))
    assert random_weights.in_memory(mem.path) and not random_weights.in_memory(disk.path)
    assert mem.path.name == disk.path.name + "-memory" and not list(mem.path.glob("*.safetensors"))
    assert mem.bytes_per_device == disk.bytes_per_device and set(mem.bytes_per_device) == {"cpu"}
    assert type(mem.model) is type(disk.model)
    assert type(getattr(mem.model, "hf_quantizer", None)) is type(getattr(disk.model, "hf_quantizer", None))
    for name in ("is_quantized", "is_loaded_in_4bit", "is_loaded_in_8bit", "quantization_method"):
        assert getattr(mem.model, name, None) == getattr(disk.model, name, None), name
    a, b = disk.model.state_dict(), mem.model.state_dict()
    assert a.keys() == b.keys()
    for key in a:
        if type(a[key]) is torch.Tensor or isinstance(a[key], torch.nn.Parameter):
            assert torch.equal(a[key], b[key]), key
    assert mem.model.lm_head.weight is mem.model.model.embed_tokens.weight  # tied as the checkpoint load ties
    assert mem.model.generation_config.eos_token_id == disk.model.generation_config.eos_token_id == 1
    assert _tokens(mem) == _tokens(disk)


def test_auto_storage_is_memory_for_27b_and_disk_for_the_tiny_model(compose_cfg, tmp_path) -> None:
    from omegaconf import OmegaConf

    from gemma_run.loading import random_weights

    big = compose_cfg(["model=gemma3_27b", "model.weights=random"]).model
    arch = random_weights.architecture_config(OmegaConf.to_container(big.config), True)
    assert 53e9 < random_weights.checkpoint_bytes(arch) < 55e9  # 27.0B parameters in bf16
    assert random_weights.storage(big, arch, tmp_path / "random" / "x") == "memory"
    tiny = compose_cfg().model
    tiny_arch = random_weights.architecture_config(OmegaConf.to_container(tiny.config), True)
    assert random_weights.storage(tiny, tiny_arch, tmp_path / "random" / "y") == "disk"
    big.random_storage = "disk"  # an explicit choice wins
    assert random_weights.storage(big, arch, tmp_path / "random" / "x") == "disk"


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
    assert "built random tiny_gemma3 in memory on cpu" in out.stderr


def _gpu_case(compose_cfg, overrides: list[str]) -> dict:
    import time

    import torch

    from gemma_run.loading import load

    torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    loaded = load(compose_cfg(["model.weights=random", "model.random_storage=memory", "device_map=auto",
                               *overrides]))
    seconds = time.perf_counter() - start
    tokens = _tokens(loaded, 8)
    row = {"load_s": round(seconds, 1), "bytes_per_device": loaded.bytes_per_device,
           "peak_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2), "tokens": len(tokens)}
    print(f"\n{' '.join(overrides)}: {row}")
    assert set(loaded.bytes_per_device) == {"cuda:0"}
    del loaded
    torch.cuda.empty_cache()
    return row


@pytest.mark.gpu
@pytest.mark.parametrize("quant", [["quant=none"], ["quant=4bit"], ["quant=int4"]])
def test_gpu_random_4b_in_memory(compose_cfg, quant: list[str]) -> None:
    row = _gpu_case(compose_cfg, ["model=gemma3_4b", *quant])
    total = sum(row["bytes_per_device"].values())
    assert total < (9e9 if quant == ["quant=none"] else 4e9)


@pytest.mark.gpu
@pytest.mark.parametrize("quant", [["quant=4bit"], ["quant=int4"]])
def test_gpu_random_27b_quantized_in_memory_on_one_gpu(compose_cfg, quant: list[str]) -> None:
    """27B bf16 (54 GB) cannot be written to the GPU machine's disk; built in memory and quantized it is
    ~15-18 GiB on one GPU."""
    row = _gpu_case(compose_cfg, ["model=gemma3_27b", *quant])
    assert sum(row["bytes_per_device"].values()) < 20 * 2**30
