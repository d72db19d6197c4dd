"""A secret given as +env.vars.HF_TOKEN=... is in no file a run writes and on no line it prints: training, inference,
a shell value replaced with env.override=true, and a sweep (-m). Every file under the run dir is searched, binary
ones too (checkpoints, TensorBoard events)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

SECRET = "hf_secretvalue123"
OLD = "hf_oldshellsecret456"  # already in the shell: replaced with env.override=true, printed nowhere either
TRAIN = ["task=train", "train.max_steps=2", "train.logging_steps=1", "train.max_seq_length=128", "train.save_steps=1"]


def leaks(proc, root: Path, *secrets: str) -> list[str]:
    """Where any of ``secrets`` appears: 'stdout', 'stderr' or a file's path under ``root``."""
    streams = (("stdout", proc.stdout), ("stderr", proc.stderr))
    found = [name for name, text in streams if any(s in text for s in secrets)]
    for path in root.rglob("*"):
        if path.is_file() and any(s.encode() in path.read_bytes() for s in secrets):
            found.append(str(path.relative_to(root)))
    return found


@pytest.fixture
def alpaca(tmp_path: Path) -> Path:
    path = tmp_path / "data" / "alpaca.jsonl"
    path.parent.mkdir()
    path.write_text("".join(json.dumps({"instruction": f"Say {i}", "output": "ok " * 3}) + "\n" for i in range(8)))
    return path


@pytest.mark.slow
def test_training_writes_and_prints_no_secret(cli, alpaca: Path, tmp_path: Path) -> None:
    proc = cli(*TRAIN, f"data.train_file={alpaca}", f"+env.vars.HF_TOKEN={SECRET}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "HF_TOKEN=[REDACTED]" in proc.stderr
    [run_dir] = (tmp_path / "outputs").glob("*/*")
    assert (run_dir / "train_config.yaml").is_file() and (run_dir / "checkpoint-2").is_dir()
    assert leaks(proc, tmp_path / "outputs", SECRET) == []


@pytest.mark.slow
def test_inference_with_a_replaced_shell_secret_writes_and_prints_none(cli, tmp_path: Path) -> None:
    proc = cli(f"+env.vars.HF_TOKEN={SECRET}", "env.override=true", "generation.max_new_tokens=2",
               env={"HF_TOKEN": OLD})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "env: HF_TOKEN=[REDACTED] (was [REDACTED])" in proc.stderr
    assert leaks(proc, tmp_path / "outputs", SECRET, OLD) == []


@pytest.mark.slow
def test_sweep_writes_and_prints_no_secret(cli, tmp_path: Path) -> None:
    other = SECRET.replace("123", "789")
    proc = cli("-m", f"+env.vars.HF_TOKEN={SECRET},{other}", "generation.max_new_tokens=1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "HF_TOKEN=[REDACTED]" in proc.stderr  # Hydra's "#0 : ..." line, redacted
    assert len(list((tmp_path / "multirun").glob("*/*/0/result.json"))) == 1
    assert leaks(proc, tmp_path / "multirun", SECRET, other) == []


def test_ranks_read_the_config_without_the_placeholder(compose_cfg, tmp_path: Path) -> None:
    """train_config.yaml (read by torchrun/deepspeed ranks) holds no secret; a rank does not export [REDACTED]
    over the value it inherited from the launching process."""
    from gemma_run.distributed.launch import CONFIG, write_config
    from gemma_run.distributed.worker import read_config

    cfg = compose_cfg([f"+env.vars.HF_TOKEN={SECRET}", "+env.vars.NCCL_DEBUG=WARN"])
    write_config(cfg, tmp_path)
    assert SECRET not in (tmp_path / CONFIG).read_text()
    variables = read_config(tmp_path).env.vars
    assert "HF_TOKEN" not in variables and variables["NCCL_DEBUG"] == "WARN"
