"""The app end to end as a user runs it: the main command, a sweep, and the installed wheel's configs."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from helpers.run_if import RunIf
from helpers.runs import REPO, run_dirs
from omegaconf import OmegaConf

CONF = REPO / "gemma_run" / "conf"


def test_main_command_runs_the_tiny_model(cli, tmp_path: Path) -> None:
    proc = cli("prompt=Hello there", "generation.max_new_tokens=8")
    assert proc.returncode == 0, proc.stderr
    (run,) = run_dirs(tmp_path)
    result = json.loads((run / "result.json").read_text())
    assert result["status"] == "ok" and result["model"] == "tiny_gemma3" and result["new_tokens"] > 0
    assert sum(result["bytes_per_device"].values()) > 0
    (line,) = (run / "generations.jsonl").read_text().splitlines()
    record = json.loads(line)
    assert record["prompt"] == "Hello there"
    assert record["completion"] in proc.stdout  # the completion is what the user sees printed
    saved = OmegaConf.load(run / ".hydra" / "config.yaml")
    assert saved.prompt == "Hello there" and saved.model.name == "tiny_gemma3"


@pytest.mark.slow
def test_multirun_writes_each_job_with_its_config_and_result(cli, tmp_path: Path) -> None:
    proc = cli("-m", "quant=none,8bit", "seed=0,1", "generation.max_new_tokens=2")
    assert proc.returncode == 0, proc.stderr
    (sweep,) = [p for p in (tmp_path / "multirun").glob("*/*") if p.is_dir()]
    jobs = sorted((p for p in sweep.iterdir() if p.is_dir() and p.name.isdigit()), key=lambda p: int(p.name))
    assert [j.name for j in jobs] == ["0", "1", "2", "3"]
    seen = set()
    for job in jobs:
        cfg = OmegaConf.load(job / ".hydra" / "config.yaml")
        result = json.loads((job / "result.json").read_text())
        assert result["status"] == "ok" and result["quant"] == cfg.quant.name
        seen.add((cfg.quant.name, cfg.seed))
    assert seen == {("none", 0), ("none", 1), ("8bit", 0), ("8bit", 1)}
    assert not (tmp_path / "outputs").exists()


@pytest.mark.slow
def test_wheel_ships_the_configs(tmp_path: Path) -> None:
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(tmp_path), str(REPO)], check=True, capture_output=True, timeout=300)
    (wheel,) = tmp_path.glob("gemma_run-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = {f"gemma_run/conf/{p.relative_to(CONF)}" for p in CONF.rglob("*.yaml")
                if p.parent.name != "local"}
    assert expected <= names, sorted(expected - names)
    assert "gemma_run/assets/gemma_chat_template.jinja" in names


def test_optional_libraries_import_noise_stays_out_of_the_console(cli) -> None:
    """torchao (installed for quant=int4) logs failed optional extensions and a pytree deprecation at import on
    every run; none is actionable, so the patch logging.quiet_optional_imports keeps them out, and the run's own
    log still shows."""
    proc = cli("prompt=hi", "generation.max_new_tokens=4")
    assert proc.returncode == 0, proc.stderr
    for noise in ("Failed to load", "register_constant", "Detected no triton"):
        assert noise not in proc.stderr
    assert "generation engine: hf" in proc.stderr


@RunIf(deepspeed=True)
def test_building_the_random_model_keeps_deepspeeds_cpu_notice_off_stdout(cli, tmp_path) -> None:
    """An empty cache: the tiny model is built and saved through transformers, which has accelerate import DeepSpeed;
    on a machine without a GPU, DeepSpeed's accelerator detection prints "Setting accelerator to CPU ..." on stdout,
    ahead of the run's own output (task=bench's table, a generation). The same patch drops it."""
    proc = cli("prompt=hi", "generation.max_new_tokens=4", "generation.stream=false",
               env={"GEMMA_RUN_CACHE": str(tmp_path / "empty")})
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "empty" / "random").is_dir()  # it was built in this run
    assert "Setting accelerator" not in proc.stdout + proc.stderr
