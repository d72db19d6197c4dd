"""Composition: every option of every group composes and is typed; bad input fails with the fix named."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers.runs import REPO
from omegaconf import OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, ValidationError

CONF = REPO / "gemma_run" / "conf"
GROUPS = sorted(p.name for p in CONF.iterdir() if p.is_dir() and any(p.glob("*.yaml")) and p.name != "local")


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


@pytest.mark.parametrize(("group", "option"), [(g, o) for g in GROUPS for o in options(g)])
def test_every_option_composes(compose_cfg, group: str, option: str) -> None:
    cfg = compose_cfg([f"{group}={option}"])
    node = cfg[group]
    assert OmegaConf.get_type(node).__name__.endswith("Config"), f"{group}/{option} is not typed by a schema"
    if "name" in node:
        assert node.name == option, f"gemma_run/conf/{group}/{option}.yaml has name: {node.name}"


def test_required_groups_and_options_exist() -> None:
    assert {"model", "quant", "device_map", "env", "task"} <= set(GROUPS)
    assert {"tiny_gemma3", "gemma3_1b", "gemma3_4b", "gemma3_12b", "gemma3_27b", "gemma2_2b", "gpt2_xl"} <= set(
        options("model"))
    assert {"none", "8bit", "4bit", "fp4"} <= set(options("quant"))
    assert {"auto", "balanced", "sequential", "single", "cpu", "explicit"} <= set(options("device_map"))
    assert {"default", "rtx3090x3"} <= set(options("env"))


def test_defaults_are_the_tiny_model_infer_run(compose_cfg) -> None:
    cfg = compose_cfg()
    assert (cfg.model.name, cfg.task.name, cfg.quant.name, cfg.device_map.name) == (
        "tiny_gemma3", "infer", "none", "auto")
    from gemma_run.loading.checkpoint import uses_random

    assert cfg.model.weights.name == "auto" and uses_random(cfg.model)  # random unless model.path is given


def _cause(compose_cfg, overrides: list[str]) -> Exception:
    with pytest.raises(Exception) as info:
        compose_cfg(overrides)
    return info.value.__cause__


def test_misspelt_key_fails_at_compose(compose_cfg) -> None:
    cause = _cause(compose_cfg, ["model.wieghts=random"])
    assert isinstance(cause, ConfigAttributeError | ConfigKeyError)
    assert "wieghts" in str(cause) and "ModelConfig" in str(cause)


def test_wrong_type_fails_at_compose(compose_cfg) -> None:
    cause = _cause(compose_cfg, ["batch_size=lots"])
    assert isinstance(cause, ValidationError) and "batch_size" in str(cause) and "Integer" in str(cause)


def test_enum_value_checked(compose_cfg) -> None:
    cause = _cause(compose_cfg, ["model.weights=downloaded"])
    assert isinstance(cause, ValidationError) and "pretrained" in str(cause) and "random" in str(cause)


def test_rtx3090x3_keeps_the_quiet_defaults(compose_cfg) -> None:
    cfg = compose_cfg(["env=rtx3090x3"])
    assert cfg.env.vars == {
        "TOKENIZERS_PARALLELISM": "false", "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1",
        "CUDA_VISIBLE_DEVICES": "0,1,2", "NCCL_P2P_DISABLE": "1", "NCCL_DEBUG": "INFO",
        "TORCHINDUCTOR_CACHE_DIR": f"{cfg.cache_dir}/torchinductor",
    }


def test_env_var_addable_from_command_line(compose_cfg) -> None:
    cfg = compose_cfg(["+env.vars.NCCL_DEBUG=WARN"])
    assert cfg.env.vars.NCCL_DEBUG == "WARN"


def test_user_config_dir_adds_options(tmp_path: Path, cache_dir: Path) -> None:
    from gemma_run import compose

    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "mine.yaml").write_text("defaults:\n  - tiny_gemma3\nname: mine\nseed: 7\n")
    cfg = compose(["model=mine", f"cache_dir={cache_dir}"], config_dir=tmp_path)
    assert (cfg.model.name, cfg.model.seed, cfg.model.config.hidden_size) == ("mine", 7, 64)


def test_tiny_model_is_gemma3_with_a_global_and_a_sliding_layer(compose_cfg) -> None:
    c = compose_cfg().model.config
    assert c.model_type == "gemma3_text"
    assert set(c.layer_types) == {"sliding_attention", "full_attention"}
    for size in (c.hidden_size, c.intermediate_size, c.head_dim * c.num_attention_heads,
                 c.head_dim * c.num_key_value_heads):
        assert size % 32 == 0


# --- the command line: one clear message, the fix, non-zero exit, no traceback -------------------------------

def _assert_clean_failure(proc) -> str:
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "Traceback" not in out
    return out


def test_cli_unknown_option_lists_the_available_ones(cli) -> None:
    out = _assert_clean_failure(cli("model=gemma9"))
    assert "model/gemma9" in out and "gemma3_27b" in out and "tiny_gemma3" in out
    assert "base_model" not in out


def test_cli_unknown_key_names_the_nearest(cli) -> None:
    out = _assert_clean_failure(cli("generation.max_new_token=3"))
    assert "did you mean `generation.max_new_tokens`" in out
    out = _assert_clean_failure(cli("model.hidden_sise=3"))
    assert "model.config.hidden_size" in out


def test_cli_wrong_type_names_key_and_type(cli) -> None:
    out = _assert_clean_failure(cli("batch_size=abc"))
    assert "batch_size" in out and "Integer" in out


def test_cli_sweep_with_a_bad_option_fails_before_any_job(cli, tmp_path: Path) -> None:
    out = _assert_clean_failure(cli("-m", "quant=none,4bti"))
    assert "quant/4bti" in out
    assert not (tmp_path / "multirun").exists()


def test_cli_unimportable_plugin_is_named(cli) -> None:
    out = _assert_clean_failure(cli("+plugins.mine={_target_:no_such_pkg.Plugin,order:5}"))
    assert "plugins.mine._target_" in out and "no_such_pkg" in out


def test_cli_several_problems_reported_together(cli) -> None:
    out = _assert_clean_failure(cli("generation.max_new_tokens=0", "prompt=", "batch_size=0"))
    assert "3 problem(s)" in out
    for key in ("generation.max_new_tokens", "prompt", "batch_size"):
        assert f"at:  {key}" in out
