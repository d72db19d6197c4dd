"""model.path: a given path is the weights that run (or a clear error), and its config.json is the model everywhere:
the plan, the preflight, the log's model name and result.json. Also a model group that disagrees with the
checkpoint, a user model YAML without `name`, and a checkpoint whose safetensors file was cut short."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from helpers.runs import run_dirs

from gemma_run.app.errors import GemmaRunError

# A Gemma 3 text model of 3.74 M parameters: four times the tiny default's width, twice its layers.
CKPT_CONFIG = {
    "model_type": "gemma3_text", "vocab_size": 512, "hidden_size": 256, "intermediate_size": 960,
    "num_hidden_layers": 4, "num_attention_heads": 4, "num_key_value_heads": 1, "head_dim": 64,
    "query_pre_attn_scalar": 64, "layer_types": ["sliding_attention", "full_attention"] * 2, "sliding_window": 16,
    "max_position_embeddings": 512, "tie_word_embeddings": True, "pad_token_id": 0, "eos_token_id": 1,
    "bos_token_id": 2,
}
PARAMS = 3_740_416  # 512x256 embedding + 4 x (q/k/v/o 163,840 + MLP 737,280 + 4 norms of 256 + 2 of 64) + norm


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A saved 3.7 M-parameter checkpoint (safetensors + tokenizer), as save_pretrained writes one."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from gemma_run.loading.tokenizer_build import build_tokenizer

    d = tmp_path_factory.mktemp("models") / "ckpt37m"
    params = dict(CKPT_CONFIG)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(AutoConfig.for_model(params.pop("model_type"), **params))
    assert sum(p.numel() for p in model.parameters()) == PARAMS
    model.save_pretrained(d, safe_serialization=True)
    build_tokenizer(512, d, model_max_length=512)
    return d


def _result(root: Path) -> dict:
    return json.loads((run_dirs(root)[-1] / "result.json").read_text())


def _clean_failure(proc) -> str:
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    return proc.stderr


# --- the checkpoint is the model ----------------------------------------------------------------------------------

@pytest.mark.slow
def test_plan_of_a_model_path_plans_the_checkpoint(cli, ckpt: Path, tmp_path: Path) -> None:
    out = cli("task=plan", f"model.path={ckpt}")
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("plan: ckpt37m infer") and "3.74 M" in out.stdout
    result = _result(tmp_path)
    assert result["params"]["total"] == PARAMS
    assert (result["model"], result["model_path"]) == ("ckpt37m", str(ckpt))
    assert "is not the architecture" not in out.stderr  # the tiny default only describes random weights


@pytest.mark.slow
def test_infer_with_a_model_path_loads_those_weights(cli, ckpt: Path, tmp_path: Path) -> None:
    out = cli(f"model.path={ckpt}", "prompt=hi", "generation.max_new_tokens=2")
    assert out.returncode == 0, out.stderr
    assert f"loading ckpt37m from {ckpt} " in out.stderr and "building random-weight" not in out.stderr
    result = _result(tmp_path)
    assert (result["model"], result["model_path"]) == ("ckpt37m", str(ckpt))
    # the preflight planned the checkpoint (3.74 M fp32 parameters = 14.3 MiB), not the 0.11 M default
    assert sum(result["preflight"]["bytes_per_device"].values()) > PARAMS * 4


@pytest.mark.slow
@pytest.mark.parametrize("task", ["infer", "plan"])
def test_a_model_path_that_does_not_exist_is_an_error(cli, tmp_path: Path, task: str) -> None:
    err = _clean_failure(cli(f"task={task}", f"model.path={tmp_path / 'no_such_model'}", "prompt=hi"))
    assert f"error: model.path {tmp_path / 'no_such_model'} does not exist" in err
    assert "at:  model.path" in err and "building random-weight" not in err


def test_random_weights_with_a_model_path_are_refused(compose_cfg, ckpt: Path) -> None:
    from gemma_run.app.validation import validate

    problems = validate(compose_cfg([f"model.path={ckpt}", "model.weights=random"]))
    assert [p.key for p in problems] == ["model.weights"]
    assert "a given model.path is always the weights that run" in problems[0].problem
    assert "drop model.weights=random" in problems[0].fix


@pytest.mark.slow
def test_a_merged_model_runs_from_its_path(cli, compose_cfg, tmp_path: Path) -> None:
    """task=merge writes base + adapter; `model.path=<merged>` alone (default model group) runs those weights."""
    from peft import LoraConfig, get_peft_model

    from gemma_run.loading import load

    adapter = tmp_path / "adapter"
    base = load(compose_cfg(), device_map=None).model
    lora = LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)  # non-zero: a change
    get_peft_model(base, lora).save_pretrained(adapter)
    merged = tmp_path / "merged"
    out = cli("task=merge", f"task.adapter={adapter}", f"task.output_dir={merged}")
    assert out.returncode == 0, out.stderr
    assert (merged / "config.json").is_file() and (merged / "model.safetensors").is_file()
    out = cli(f"model.path={merged}", "prompt=hi", "generation.max_new_tokens=2")
    assert out.returncode == 0, out.stderr
    assert f"loading merged from {merged} " in out.stderr
    assert (_result(tmp_path)["model"], _result(tmp_path)["model_path"]) == ("merged", str(merged))


@pytest.mark.slow
def test_a_model_group_that_disagrees_with_its_checkpoint_is_named(cli, ckpt: Path, tmp_path: Path) -> None:
    out = cli("task=plan", "model=gemma3_1b", f"model.path={ckpt}")
    assert out.returncode == 0, out.stderr
    assert f"model.path {ckpt} is not the architecture of model group gemma3_1b" in out.stderr
    assert "hidden_size 256 (model group: 1152)" in out.stderr
    assert "num_hidden_layers 4 (model group: 26)" in out.stderr
    result = _result(tmp_path)
    assert result["model_config_differs"]["hidden_size"] == [1152, 256] and result["params"]["total"] == PARAMS


# --- a user's model YAML without `name` ---------------------------------------------------------------------------

@pytest.mark.slow
def test_user_model_yaml_without_name_names_the_file_and_the_key(cli, tmp_path: Path) -> None:
    user = tmp_path / "my_configs"
    (user / "model").mkdir(parents=True)
    yaml = user / "model" / "bare.yaml"
    yaml.write_text("defaults:\n  - base_model\nweights: random\nconfig:\n  model_type: gemma3_text\n")
    err = _clean_failure(cli("--config-dir", str(user), "model=bare", "prompt=hi"))
    assert f"error: model option `bare` ({yaml}) has no `name`" in err
    assert "at:  model.name" in err and f"fix: add `name: bare` to {yaml}" in err


# --- an incomplete checkpoint ---------------------------------------------------------------------------------------

@pytest.mark.slow
def test_truncated_safetensors_is_named_as_incomplete(cli, ckpt: Path, tmp_path: Path) -> None:
    cut = tmp_path / "cut"
    shutil.copytree(ckpt, cut)
    weights = cut / "model.safetensors"
    with weights.open("r+b") as f:
        f.truncate(weights.stat().st_size // 2)
    err = _clean_failure(cli(f"model.path={cut}", "prompt=hi"))
    assert f"error: {weights} is incomplete: " in err and "of the" in err
    assert f"at:  {weights}" in err and "download or copy the checkpoint again" in err


def test_a_shard_missing_from_the_index_is_named(ckpt: Path, tmp_path: Path) -> None:
    from gemma_run.loading import checkpoint

    d = tmp_path / "sharded"
    shutil.copytree(ckpt, d)
    (d / "model.safetensors").rename(d / "model-00001-of-00002.safetensors")
    index = {"weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}
    (d / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(GemmaRunError, match="1 shard") as e:
        checkpoint.check_weights(d, allow_pickle=False)
    assert "is incomplete" in e.value.problem and e.value.key == str(d / "model-00002-of-00002.safetensors")
