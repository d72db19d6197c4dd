"""No setting silently ignored: a `+key` that no schema has is refused with the nearest real key, before any run
dir is made; keys inside open maps (env.vars, plugins, model.config) are still the user's to add."""

from __future__ import annotations

from pathlib import Path

import pytest

from gemma_run.app.errors import ConfigError


def _refused(proc, root: Path) -> list[str]:
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (root / "outputs").exists()  # refused before Hydra made a run dir
    return proc.stderr.strip().splitlines()


@pytest.mark.parametrize(("arg", "near"), [
    ("+generation.temprature=0.5", "generation.temperature=0.5"),
    ("+max_new_tokens=-5", "generation.max_new_tokens=-5"),
])
def test_cli_plus_key_outside_every_schema_is_refused_with_the_nearest(cli, tmp_path: Path, arg: str,
                                                                       near: str) -> None:
    key = arg[1:].split("=")[0]
    lines = _refused(cli(arg), tmp_path)
    assert lines[0].startswith(f"error: unknown key `{key}`")
    assert lines[1:] == [f"  at:  {key}", f"  fix: {near}"]


def test_cli_unknown_top_level_key_names_the_nearest_not_the_plus_form(cli, tmp_path: Path) -> None:
    lines = _refused(cli("max_new_tokens=-5"), tmp_path)
    assert lines == ["error: unknown key `max_new_tokens`: did you mean `generation.max_new_tokens`?",
                     "  at:  max_new_tokens", "  fix: generation.max_new_tokens=-5"]


def test_cli_key_of_an_open_map_without_plus_is_shown_the_plus_form(cli, tmp_path: Path) -> None:
    lines = _refused(cli("model.config.attn_logit_softcapping=50.0"), tmp_path)
    assert lines == ["error: `model.config` has no key `attn_logit_softcapping` yet",
                     "  at:  model.config.attn_logit_softcapping",
                     "  fix: +model.config.attn_logit_softcapping=50.0"]


def test_open_maps_take_new_keys_and_other_plus_keys_are_problems(compose_cfg) -> None:
    """The same rule in the pipeline's validation (for runs composed from Python): open maps are accepted."""
    from gemma_run.app.validation import validate

    open_maps = ["+env.vars.GR_TEST_FOO=1", "+plugins.mine={_target_:tests.helpers.probe_plugin.Probe,order:5}",
                 "+model.config.attn_logit_softcapping=50.0", "+device_map.max_memory.cpu=1GiB"]
    assert validate(compose_cfg(open_maps)) == []
    problems = validate(compose_cfg([*open_maps, "+generation.temprature=0.5", "+train.lerning_rate=1e-3"]))
    assert all(isinstance(p, ConfigError) for p in problems)
    assert [(p.key, p.fix) for p in problems] == [("generation.temprature", "generation.temperature=0.5"),
                                                 ("train.lerning_rate", "train.learning_rate=0.001")]


def test_run_from_python_refuses_an_unknown_plus_key(compose_cfg, tmp_path: Path) -> None:
    from gemma_run import run
    from gemma_run.app.errors import GemmaRunError

    with pytest.raises(GemmaRunError) as e:
        run(compose_cfg(["task=plan", "+generation.temprature=0.5"]), tmp_path)
    assert e.value.key == "generation.temprature" and e.value.fix == "generation.temperature=0.5"
