"""The env plugin: what it exports, what it keeps, what it hides, and that it runs before torch."""

from __future__ import annotations

import json
from pathlib import Path

from helpers.runs import run_dirs

from gemma_run.app.env import REDACTED, export, is_secret


def test_export_sets_keeps_and_replaces() -> None:
    environ = {"KEEP": "mine", "SAME": "1"}
    done = export({"NEW": 1, "KEEP": "theirs", "SAME": "1"}, override=False, environ=environ)
    assert environ == {"KEEP": "mine", "SAME": "1", "NEW": "1"}
    assert [(d.name, d.action) for d in done] == [("NEW", "set"), ("KEEP", "kept"), ("SAME", "kept")]
    done = export({"KEEP": "theirs"}, override=True, environ=environ)
    assert environ["KEEP"] == "theirs" and done[0].action == "replaced" and done[0].previous == "mine"


def test_secret_names() -> None:
    for name in ("HF_TOKEN", "WANDB_API_KEY", "AWS_SECRET_ACCESS_KEY", "DB_PASSWORD", "HFTOKEN", "my_secret"):
        assert is_secret(name), name
    for name in ("TOKENIZERS_PARALLELISM", "NCCL_DEBUG", "CUDA_VISIBLE_DEVICES", "KEYBOARD_LAYOUT"):
        assert not is_secret(name), name


def test_secret_values_are_redacted_in_logs_and_saved_config(cli, tmp_path: Path) -> None:
    proc = cli("+env.vars.HF_TOKEN=hf_supersecret123", "+env.vars.NCCL_DEBUG=WARN", "generation.max_new_tokens=2")
    assert proc.returncode == 0, proc.stderr
    (run,) = run_dirs(tmp_path)
    everything = proc.stdout + proc.stderr + "".join(
        p.read_text() for p in [*run.glob(".hydra/*.yaml"), run / "cli.log", run / "result.json"])
    assert "hf_supersecret123" not in everything
    assert f"HF_TOKEN={REDACTED}" in proc.stderr
    assert "NCCL_DEBUG=WARN" in proc.stderr  # ordinary values are shown
    assert "HF_TOKEN: '[REDACTED]'" in (run / ".hydra" / "config.yaml").read_text()


def test_env_is_exported_before_torch_is_imported(cli, tmp_path: Path) -> None:
    """OMP_NUM_THREADS only takes effect if set before torch starts: torch must see the env group's value."""
    out = tmp_path / "probe.json"
    proc = cli("+env.vars.OMP_NUM_THREADS=1", "env.override=true",
               f"+plugins.probe={{_target_:tests.helpers.probe_plugin.Probe,order:15,out:'{out}'}}",
               "generation.max_new_tokens=1", cwd=Path(__file__).resolve().parents[1],
               env={"OMP_NUM_THREADS": "2"})  # this machine has 2 cores: torch caps the count there
    assert proc.returncode == 0, proc.stderr
    probe = json.loads(out.read_text())
    assert probe["torch_threads"] == 1
    assert probe["env_result"]["OMP_NUM_THREADS"] == "1"
    assert probe["modules_before"] == []  # nothing heavy was imported before the env plugin ran


def test_env_var_override_adds_or_replaces_whatever_the_group_sets(cli, tmp_path: Path) -> None:
    """docs/configuration.md's `gemma-run +env.vars.NCCL_DEBUG=WARN env=rtx3090x3`: `+` on a variable the group
    already sets (NCCL_DEBUG=INFO there) replaces it, and the form without `+` adds one the group does not set."""
    proc = cli("+env.vars.NCCL_DEBUG=WARN", "env=rtx3090x3", "env.vars.GEMMA_RUN_PROBE=1", "prompt=Hi",
               "generation.max_new_tokens=1")
    assert proc.returncode == 0, proc.stderr
    assert "env: NCCL_DEBUG=WARN" in proc.stderr and "env: GEMMA_RUN_PROBE=1" in proc.stderr
    (run,) = run_dirs(tmp_path)
    assert json.loads((run / "result.json").read_text())["env"]["NCCL_DEBUG"] == "WARN"
