"""The one loading path: safetensors-only refusal, missing weights, dtype rules, bitsandbytes checks, device map
checks, and Gemma 3 multimodal checkpoints loaded text-only (the language model alone)."""

from __future__ import annotations

import json
import shutil
import sys
import types
from pathlib import Path

import pytest
from helpers.run_if import RunIf
from omegaconf import OmegaConf

from gemma_run.app.errors import GemmaRunError
from gemma_run.loading import checkpoint, checks, choose_dtype, load, placement
from gemma_run.quant import bitsandbytes as quantization

# --- where the weights are ---------------------------------------------------------------------------------------


def _dir_with(tmp_path: Path, *names: str) -> Path:
    d = tmp_path / "ckpt"
    d.mkdir()
    for name in names:
        (d / name).write_text("{}" if name.endswith(".json") else "x")
    return d


def test_pickle_only_checkpoint_is_refused_with_the_opt_in_key(tmp_path):
    d = _dir_with(tmp_path, "config.json", "pytorch_model.bin")
    with pytest.raises(GemmaRunError) as e:
        checkpoint.check_weights(d, allow_pickle=False)
    assert e.value.key == "model.allow_pickle"
    assert "CVE-2025-32434" in e.value.problem and "torch.load" in e.value.problem
    assert "model.allow_pickle=true" in e.value.fix
    checkpoint.check_weights(d, allow_pickle=True)  # the explicit opt-in lets it through


def test_missing_weights_and_missing_dir(tmp_path):
    with pytest.raises(GemmaRunError, match="no weights") as e:
        checkpoint.check_weights(_dir_with(tmp_path, "config.json"), allow_pickle=False)
    assert e.value.key == "model.path"
    model_cfg = types.SimpleNamespace(weights=types.SimpleNamespace(name="pretrained"), path=str(tmp_path / "gone"),
                                      allow_pickle=False)
    with pytest.raises(GemmaRunError, match="does not exist") as e:
        checkpoint.resolve(model_cfg, tmp_path)
    assert "model.weights=random" in e.value.fix


def test_fp16_refused_for_gemma3():
    model_cfg = OmegaConf.create({"dtype": "float16", "config": {"model_type": "gemma3_text"}})
    with pytest.raises(GemmaRunError, match="overflow") as e:
        choose_dtype(model_cfg, None)
    assert e.value.key == "model.dtype"
    assert choose_dtype(OmegaConf.create({"dtype": "auto", "config": {}}), None, "gemma3") == "float32"  # CPU


# --- bitsandbytes --------------------------------------------------------------------------------------------------

def _quant(**keys):
    base = {"name": "4bit", "backend": {"name": "bitsandbytes"}, "bits": 4, "compute_dtype": "bfloat16"}
    return OmegaConf.create({**base, **keys})


def test_bitsandbytes_that_cannot_import_says_why_and_the_fix(monkeypatch):
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # `import bitsandbytes` raises ImportError
    with pytest.raises(GemmaRunError) as e:
        quantization.check_bitsandbytes(_quant())
    assert e.value.key == "quant" and "pip install" in e.value.fix and "quant=none" in e.value.fix


def test_bitsandbytes_without_a_cpu_backend_is_refused_on_a_cpu_machine(monkeypatch):
    import torch

    if torch.cuda.is_available():
        pytest.skip("checks the CPU-only case")
    monkeypatch.setitem(sys.modules, "bitsandbytes", types.SimpleNamespace(__version__="0.42.0"))
    with pytest.raises(GemmaRunError, match="no CPU backend") as e:
        quantization.check_bitsandbytes(_quant())
    assert ">=0.45" in e.value.fix


def test_fp16_compute_refused_for_gemma3_4bit():
    with pytest.raises(GemmaRunError) as e:
        quantization.check_bitsandbytes(_quant(compute_dtype="float16"), "gemma3_text")
    assert e.value.key == "quant.compute_dtype"


# --- device maps ---------------------------------------------------------------------------------------------------

def test_devices_must_exist():
    placement.check_devices({"model.embed_tokens": 0, "lm_head": "cuda:1"}, {0: "20GiB", "cpu": "64GiB"}, n_gpus=2)
    with pytest.raises(GemmaRunError, match="GPU cuda:2") as e:
        placement.check_devices({"lm_head": "cuda:2"}, None, n_gpus=2)
    assert e.value.key == "device_map.map.lm_head"
    with pytest.raises(GemmaRunError, match="GPU 3"):
        placement.check_devices("auto", {3: "10GiB"}, n_gpus=2)  # accelerate would drop it silently
    with pytest.raises(GemmaRunError, match="unknown device 'gpu0'"):
        placement.check_devices({"": "gpu0"}, None, n_gpus=1)


def test_disk_offload_needs_a_folder_and_no_bitsandbytes():
    with pytest.raises(GemmaRunError) as e:
        placement.check_offload({"model.layers": "disk"}, None, quantized=False)
    assert e.value.key == "device_map.offload_folder"
    with pytest.raises(GemmaRunError, match="bitsandbytes"):
        placement.check_offload({"model.layers": "disk"}, "/tmp/x", quantized=True)


def test_explicit_map_coverage_and_names(compose_cfg):
    ok = ("{model.embed_tokens:cpu,model.layers.0:cpu,model.layers.1:cpu,model.norm:cpu,model.rotary_emb:cpu,"
          "lm_head:cpu}")
    cfg = compose_cfg(["device_map=explicit", f"+device_map.map={ok}"])
    assert checks.device_map_kwargs(cfg)["device_map"]["model.layers.1"] == "cpu"
    cfg = compose_cfg(["device_map=explicit", "+device_map.map={model.embed_tokens:cpu,model.layers.0:cpu}"])
    with pytest.raises(GemmaRunError) as e:
        checks.device_map_kwargs(cfg)
    assert "model.layers.1" in e.value.problem and "lm_head" in e.value.problem
    cfg = compose_cfg(["device_map=explicit", "+device_map.map={model.layer:cpu}"])
    with pytest.raises(GemmaRunError, match=r"did you mean model\.layers"):
        checks.device_map_kwargs(cfg)


# --- Gemma 3 multimodal checkpoints --------------------------------------------------------------------------------

TINY_MM = {
    "model_type": "gemma3", "mm_tokens_per_image": 4, "boi_token_index": 6, "eoi_token_index": 7,
    "image_token_index": 8,
    "text_config": {"model_type": "gemma3_text", "vocab_size": 512, "hidden_size": 64, "intermediate_size": 128,
                    "num_hidden_layers": 2, "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 32,
                    "layer_types": ["sliding_attention", "full_attention"], "sliding_window": 16,
                    "max_position_embeddings": 512},
    "vision_config": {"model_type": "siglip_vision_model", "hidden_size": 32, "intermediate_size": 64,
                      "num_hidden_layers": 1, "num_attention_heads": 2, "image_size": 28, "patch_size": 14,
                      "vision_use_head": False},
}


def _save_multimodal(d: Path, params: dict, cls_name: str) -> Path:
    """A tiny multimodal checkpoint of ``params`` (its model_type first) saved as safetensors, as published
    checkpoints are, with the tiny model's tokenizer."""
    import torch
    import transformers
    from transformers import AutoConfig

    from gemma_run.loading.tokenizer_build import build_tokenizer

    params = dict(params)
    config = AutoConfig.for_model(params.pop("model_type"), **params)
    torch.manual_seed(0)
    getattr(transformers, cls_name)(config).save_pretrained(d, safe_serialization=True)
    build_tokenizer(512, d, model_max_length=512)
    return d


@pytest.fixture(scope="module")
def multimodal_dir(tmp_path_factory):
    """A tiny Gemma 3 multimodal checkpoint (vision tower + language model)."""
    return _save_multimodal(tmp_path_factory.mktemp("gemma3_mm"), TINY_MM, "Gemma3ForConditionalGeneration")


def _cfg_for(compose_cfg, path: Path, *overrides: str):
    return compose_cfg(["model.weights=pretrained", f"model.path={path}", "device_map=cpu", *overrides])


def test_multimodal_checkpoint_text_only_loads_the_language_model_alone(compose_cfg, multimodal_dir):
    import torch
    from transformers import Gemma3ForConditionalGeneration

    loaded = load(_cfg_for(compose_cfg, multimodal_dir))
    assert loaded.kind == "text_only" and type(loaded.model).__name__ == "Gemma3ForCausalLM"
    names = [n for n, _ in loaded.model.named_parameters()]
    assert not any("vision" in n or "multi_modal" in n for n in names)
    assert loaded.context_length == 512
    full = Gemma3ForConditionalGeneration.from_pretrained(multimodal_dir, dtype=torch.float32)
    ids = torch.tensor([[2, 10, 11, 12, 13]])
    with torch.no_grad():
        diff = (loaded.model(ids).logits - full(input_ids=ids).logits).abs().max().item()
    assert diff == 0.0  # the same language model, weight for weight
    full_bytes = sum(p.numel() * p.element_size() for p in full.parameters())
    assert sum(loaded.bytes_per_device.values()) < full_bytes


def test_multimodal_checkpoint_with_vision_when_asked(compose_cfg, multimodal_dir):
    loaded = load(_cfg_for(compose_cfg, multimodal_dir, "model.text_only=false"))
    assert loaded.kind == "image_text"
    assert any("vision_tower" in n for n, _ in loaded.model.named_parameters())


def test_text_only_run_of_a_multimodal_checkpoint_end_to_end(compose_cfg, multimodal_dir, tmp_path):
    from gemma_run import run

    result = run(_cfg_for(compose_cfg, multimodal_dir, "prompt=Hello", "generation.max_new_tokens=4",
                          "chat=true"), tmp_path)
    assert result["load_kind"] == "text_only" and result["new_tokens"] > 0


def test_random_weights_of_a_multimodal_config_build_text_only(compose_cfg, tmp_path):
    cfg = compose_cfg([f"cache_dir={tmp_path}"])
    OmegaConf.update(cfg, "model.config", TINY_MM, merge=False)
    OmegaConf.update(cfg, "model.name", "tiny_gemma3_mm")
    loaded = load(cfg)
    assert loaded.kind == "causal_lm" and type(loaded.model).__name__ == "Gemma3ForCausalLM"
    assert checkpoint.resolve(cfg.model, cfg.cache_dir).name.startswith("tiny_gemma3_mm-")
    shutil.rmtree(tmp_path / "random")



def test_a_random_build_that_another_process_finished_first_keeps_that_copy(compose_cfg, tmp_path, monkeypatch):
    """Two processes building one random model into one cache (test workers, two runs): the one that finishes
    second finds the other's complete copy where it would move its own, and keeps that copy."""
    import os

    from gemma_run.loading import random_weights

    cfg = compose_cfg([f"cache_dir={tmp_path}"])
    real_replace = os.replace

    def other_process_first(src, dst):
        shutil.copytree(src, dst)  # the other process's complete copy lands after this one checked
        (Path(dst) / "theirs").write_text("")
        real_replace(src, dst)  # a non-empty dir: OSError, as the real race gives

    monkeypatch.setattr(random_weights.os, "replace", other_process_first)
    built = random_weights.ensure_random_checkpoint(cfg.model, cfg.cache_dir)
    monkeypatch.undo()
    assert (built / "theirs").is_file() and (built / random_weights.COMPLETE).is_file()
    assert [p.name for p in built.parent.iterdir()] == [built.name]  # this process's temporary dir removed
    assert load(cfg).model is not None

def test_image_and_text_prompts_with_a_random_multimodal_model(compose_cfg, tmp_path):
    """model.text_only=false on a multimodal config builds Gemma3ForConditionalGeneration with a Gemma 3
    processor; a JSONL line with `image` then goes through the vision tower, text lines through the tokenizer."""
    from PIL import Image

    from gemma_run import run

    Image.new("RGB", (40, 30), (200, 10, 10)).save(tmp_path / "red.png")
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "What colour is this?", "image": "red.png"}\n{"prompt": "Hello"}\n')
    cfg = compose_cfg([f"cache_dir={tmp_path / 'cache'}", "model.text_only=false", f"prompts_file={prompts}",
                       "generation.max_new_tokens=4", "batch_size=2"])
    OmegaConf.update(cfg, "model.config", TINY_MM, merge=False)
    OmegaConf.update(cfg, "model.name", "tiny_gemma3_mm")
    result = run(cfg, tmp_path / "run")
    assert result["load_kind"] == "image_text" and result["generated"] == 2
    lines = [json.loads(x) for x in (tmp_path / "run" / "generations.jsonl").read_text().splitlines()]
    assert [x["index"] for x in lines] == [0, 1] and lines[0]["image"] == "red.png"
    # the image's 4 soft tokens (mm_tokens_per_image) are in the prompt, between <start_of_image> and <end_of_image>
    assert lines[0]["prompt_tokens"] > lines[1]["prompt_tokens"]


def test_image_prompt_in_a_text_only_run_is_refused_before_loading(compose_cfg, tmp_path):
    from gemma_run.tasks.infer import validate

    (tmp_path / "cat.png").write_bytes(b"png")
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "What is this?", "image": "cat.png"}\n{"prompt": "x", "image": "dog.png"}\n')
    problems = validate(compose_cfg([f"prompts_file={prompts}"]))
    assert [p.key for p in problems] == [f"{prompts}:2", f"{prompts}:1"]
    assert "does not exist" in problems[0].problem and "model.text_only=false" in problems[1].fix


def test_hub_id_found_in_the_local_hf_cache_offline(compose_cfg, tmp_path, monkeypatch):
    """model.hub_id resolves to the snapshot in the local cache (laid out as `hf download` leaves it), no network."""
    from huggingface_hub import constants

    cfg = compose_cfg()
    src = checkpoint.resolve(cfg.model, cfg.cache_dir)
    repo = tmp_path / "hub" / "models--local--tiny-gemma3"
    snapshot = repo / "snapshots" / ("0" * 40)
    shutil.copytree(src, snapshot)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0" * 40)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    cfg = compose_cfg(["model.weights=pretrained", "model.hub_id=local/tiny-gemma3", "device_map=cpu"])
    loaded = load(cfg)
    assert loaded.path == snapshot and loaded.kind == "causal_lm"


def test_4bit_on_an_avx512_bf16_cpu_needs_output_sizes_divisible_by_32():
    import torch

    skeleton = torch.nn.ModuleDict({"ok": torch.nn.Linear(64, 64), "odd": torch.nn.Linear(64, 48),
                                    "lm_head": torch.nn.Linear(64, 500)})
    quantization.check_cpu_4bit(_quant(skip_modules=[]), skeleton, flags={"avx2"})  # other CPUs: no limit
    with pytest.raises(GemmaRunError, match="odd has 48") as e:
        quantization.check_cpu_4bit(_quant(skip_modules=[]), skeleton, flags={"avx512_bf16"})
    assert "quant=8bit" in e.value.fix
    quantization.check_cpu_4bit(_quant(skip_modules=["lm_head", "odd"]), skeleton, flags={"avx512_bf16"})
    quantization.check_cpu_4bit(_quant(bits=8), skeleton, flags={"avx512_bf16"})  # 8-bit has no such limit


@RunIf(deepspeed=True)
def test_skeleton_is_never_built_as_zero3_weights(compose_cfg):
    """With a ZeRO-3 config registered (as TrainingArguments(deepspeed=...) does), the meta skeleton used for
    checks and plans is still a plain module tree, and the registration is intact afterwards."""
    from transformers.integrations import HfDeepSpeedConfig, is_deepspeed_zero3_enabled

    from gemma_run.loading import architecture
    from gemma_run.planning import skeleton as planning_skeleton

    cfg = compose_cfg()
    path = checkpoint.resolve(cfg.model, cfg.cache_dir)
    ds = HfDeepSpeedConfig({"zero_optimization": {"stage": 3}, "train_micro_batch_size_per_gpu": 1})
    assert is_deepspeed_zero3_enabled()
    plan = architecture.plan(path, text_only=True, trust_remote_code=False)
    model = architecture.skeleton(path, plan, trust_remote_code=False)
    assert {p.device.type for p in model.parameters()} == {"meta"}
    assert not any(hasattr(p, "ds_id") for p in model.parameters())  # not partitioned by deepspeed.zero.Init
    config = json.loads((path / "config.json").read_text())
    planned = planning_skeleton.build(config, text_only=True)
    assert not any(hasattr(p, "ds_id") for p in planned.parameters())
    assert is_deepspeed_zero3_enabled()  # restored
    del ds


# --- Gemma 4 multimodal checkpoints --------------------------------------------------------------------------------

TINY_G4_MM = {
    "model_type": "gemma4",
    "text_config": {"model_type": "gemma4_text", "vocab_size": 512, "vocab_size_per_layer_input": 512,
                    "hidden_size": 64, "hidden_size_per_layer_input": 8, "intermediate_size": 128,
                    "num_hidden_layers": 4, "num_attention_heads": 2, "num_key_value_heads": 1,
                    "num_global_key_value_heads": 1, "head_dim": 32, "global_head_dim": 64,
                    "attention_k_eq_v": True, "num_kv_shared_layers": 2,
                    "layer_types": ["sliding_attention", "full_attention", "sliding_attention", "full_attention"],
                    "sliding_window": 16, "max_position_embeddings": 512, "final_logit_softcapping": 30.0},
    "vision_config": {"model_type": "gemma4_vision", "hidden_size": 32, "intermediate_size": 64,
                      "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 2, "head_dim": 16,
                      "patch_size": 8, "pooling_kernel_size": 2, "position_embedding_size": 64},
}


@pytest.fixture(scope="module")
def gemma4_multimodal_dir(tmp_path_factory):
    """A tiny Gemma 4 multimodal checkpoint (vision tower + language model with per-layer embeddings, KV shared
    by the last layers, K = V on the global ones)."""
    return _save_multimodal(tmp_path_factory.mktemp("gemma4_mm"), TINY_G4_MM, "Gemma4ForConditionalGeneration")


def test_gemma4_multimodal_checkpoint_text_only_loads_the_language_model_alone(compose_cfg, gemma4_multimodal_dir):
    import torch
    from transformers import Gemma4ForConditionalGeneration

    loaded = load(_cfg_for(compose_cfg, gemma4_multimodal_dir))
    assert loaded.kind == "text_only" and type(loaded.model).__name__ == "Gemma4ForCausalLM"
    names = [n for n, _ in loaded.model.named_parameters()]
    assert not any("vision" in n for n in names)
    assert any("embed_tokens_per_layer" in n for n in names)  # the per-layer embeddings came with it
    full = Gemma4ForConditionalGeneration.from_pretrained(gemma4_multimodal_dir, dtype=torch.float32)
    ids = torch.tensor([[2, 10, 11, 12, 13]])
    with torch.no_grad():
        diff = (loaded.model(ids).logits - full(input_ids=ids).logits).abs().max().item()
    assert diff == 0.0  # the same language model, weight for weight


def test_random_weights_of_a_gemma4_multimodal_config_build_text_only(compose_cfg, tmp_path):
    cfg = compose_cfg([f"cache_dir={tmp_path}"])
    OmegaConf.update(cfg, "model.config", TINY_G4_MM, merge=False)
    OmegaConf.update(cfg, "model.name", "tiny_gemma4_mm")
    loaded = load(cfg)
    assert type(loaded.model).__name__ == "Gemma4ForCausalLM"


# --- device_map=auto follows the memory plan ------------------------------------------------------------------------

def _fake_gpus(monkeypatch, sizes: list[int]) -> None:
    """This CPU machine seen as one with GPUs of ``sizes`` free bytes (the planner's view and the device checks)."""
    import torch

    from gemma_run.planning import inputs

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: len(sizes))
    monkeypatch.setattr(inputs, "detect_gpus", lambda: list(sizes))


def _gpu_size_for_part_of(cfg, monkeypatch, fraction: float) -> int:
    """Free bytes of a GPU that holds what the plan reserves on it (workspace, activations, logits) and
    ``fraction`` of the model's weights and KV cache."""
    from gemma_run.loading import checkpoint
    from gemma_run.planning import inputs
    from gemma_run.planning.plan import make_plan

    checkpoint.resolve(cfg.model, cfg.cache_dir)  # built before CUDA is faked
    _fake_gpus(monkeypatch, [2**40])
    plan = make_plan(inputs.from_cfg(cfg, "infer")[0])
    reserved = plan["devices"]["cuda:0"]["activations"]
    return reserved + int(fraction * (plan["weights_bytes"] + plan["kv_cache_bytes"]))


@pytest.mark.parametrize("model", ["tiny_gemma3", "tiny_gemma4", "tiny_gemma4_moe"])
def test_auto_over_gpus_loads_with_the_plans_map_which_covers_the_model(compose_cfg, monkeypatch, model):
    """device_map=auto on GPUs that the model does not fit alone: from_pretrained gets the plan's placement as an
    explicit map (not accelerate's own, which leaves no room for the KV cache the plan reserves), one that
    covers every module of the model as loaded, the tied output layer with the embedding."""
    from gemma_run.loading import architecture, checkpoint
    from gemma_run.planning import inputs
    from gemma_run.planning.plan import make_plan

    overrides = [f"model={model}", "plan.overhead_per_gpu=0"]
    size = _gpu_size_for_part_of(compose_cfg(overrides), monkeypatch, 0.8)
    cfg = compose_cfg(overrides)
    _fake_gpus(monkeypatch, [size, size])
    device_map = checks.device_map_kwargs(cfg)["device_map"]
    plan = make_plan(inputs.from_cfg(cfg, "infer")[0])
    assert plan["fits"]
    assert {str(v) for v in device_map.values()} == {"0", "1"}, device_map
    assert device_map == {name: int(dev) for name, dev in plan["device_map"].items()}
    assert device_map["lm_head"] == device_map["model.embed_tokens"]
    layers = [device_map[f"model.layers.{i}"] for i in range(2)]
    assert layers == sorted(layers)  # in order: GPU 0's layers, then GPU 1's
    path = checkpoint.resolve(cfg.model, cfg.cache_dir)
    cls_plan = architecture.plan(path, cfg.model.text_only, cfg.model.trust_remote_code)
    placement.check_coverage(device_map, architecture.skeleton(path, cls_plan, cfg.model.trust_remote_code))


def test_auto_spilling_to_the_cpu_follows_the_plan_and_fitting_on_one_gpu_stays_auto(compose_cfg, monkeypatch):
    overrides = ["plan.overhead_per_gpu=0"]
    small, big = (_gpu_size_for_part_of(compose_cfg(overrides), monkeypatch, f) for f in (0.7, 2.0))
    _fake_gpus(monkeypatch, [small])
    device_map = checks.device_map_kwargs(compose_cfg(overrides))["device_map"]
    assert {str(v) for v in device_map.values()} == {"0", "cpu"}
    assert device_map["model.embed_tokens"] == 0 and device_map["model.norm"] == "cpu"
    _fake_gpus(monkeypatch, [big])  # all on GPU 0: accelerate's auto does the same
    assert checks.device_map_kwargs(compose_cfg(overrides))["device_map"] == "auto"


@pytest.mark.parametrize("override", ["+device_map.max_memory.0=1GiB", "plan.gpus=[2x80GiB]", "device_map=single",
                                      "task=merge"])
def test_a_cap_another_machines_gpus_another_strategy_or_a_task_without_a_plan_keep_their_map(
        compose_cfg, monkeypatch, override):
    size = _gpu_size_for_part_of(compose_cfg(["plan.overhead_per_gpu=0"]), monkeypatch, 0.5)
    _fake_gpus(monkeypatch, [size, size])
    assert placement.planned(compose_cfg(["plan.overhead_per_gpu=0"])) is not None  # without it: the plan's map
    cfg = compose_cfg(["plan.overhead_per_gpu=0", override])
    assert placement.planned(cfg) is None


def test_auto_without_a_gpu_stays_auto(compose_cfg):
    assert checks.device_map_kwargs(compose_cfg())["device_map"] == "auto"


@pytest.mark.parametrize("text_only", [True, False])
def test_the_plans_map_covers_a_multimodal_checkpoint_as_loaded(compose_cfg, monkeypatch, multimodal_dir, text_only):
    """model.path of a multimodal checkpoint, text-only or with its vision tower: the plan's module names are those
    of the model that loads (language model alone, or the whole model with the tower)."""
    from gemma_run.loading import architecture

    overrides = ["model.weights=pretrained", f"model.path={multimodal_dir}", f"model.text_only={text_only}",
                 "plan.overhead_per_gpu=0"]
    size = _gpu_size_for_part_of(compose_cfg(overrides), monkeypatch, 0.8)
    _fake_gpus(monkeypatch, [size, size])
    cfg = compose_cfg(overrides)
    device_map = checks.device_map_kwargs(cfg)["device_map"]
    assert isinstance(device_map, dict) and {str(v) for v in device_map.values()} >= {"0", "1"}, device_map
    cls_plan = architecture.plan(multimodal_dir, text_only, False)
    placement.check_coverage(device_map, architecture.skeleton(multimodal_dir, cls_plan, False))
