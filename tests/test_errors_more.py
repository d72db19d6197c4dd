"""More failures that must read as one message: a run dir that cannot be written, a disk that fills up while
training, schedule keys larger than the run, a max_seq_length fix past the model's context, and bitsandbytes'
CPU block size naming every module."""

from __future__ import annotations

import errno
import json
import os
import shlex
import stat
from pathlib import Path

import pytest
from helpers.data import write_jsonl
from helpers.runs import REPO, run_dirs

from gemma_run.app.errors import GemmaRunError

TRAIN = ["task=train", "train.max_steps=2", "train.logging_steps=1", "train.max_seq_length=128"]


@pytest.fixture
def alpaca4(tmp_path: Path) -> Path:
    rows = [{"instruction": f"Say {w}", "output": f"{w} there"} for w in ("hi", "bye", "yes", "no")]
    return write_jsonl(tmp_path / "train.jsonl", rows)


# ---- a run dir on a path that cannot be written ----------------------------------------------------------------


@pytest.fixture
def unwritable(tmp_path: Path):
    """A dir this process cannot create entries in: a 0o555 dir, or (as root, who ignores modes) a path under
    /sys, which the kernel refuses to create; skipped where even that can be written."""
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(stat.S_IRUSR | stat.S_IXUSR | stat.S_IRGRP | stat.S_IXGRP | stat.S_IROTH | stat.S_IXOTH)
    try:
        for candidate in (ro, Path("/sys/gemma-run-test")):
            try:
                (candidate / "probe").mkdir(parents=True)
            except OSError:
                yield candidate
                return
            (candidate / "probe").rmdir()
        pytest.skip("every candidate read-only path is writable here")
    finally:
        ro.chmod(0o755)


def test_read_only_run_dir_is_one_message_naming_hydra_run_dir(cli, unwritable: Path) -> None:
    proc = cli("task=plan", f"hydra.run.dir={unwritable}/run")
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    first = proc.stderr.strip().splitlines()[0]
    assert first.startswith(f"error: cannot write the run dir {unwritable}/run:"), proc.stderr
    assert "at:  hydra.run.dir" in proc.stderr and "fix: hydra.run.dir=" in proc.stderr


def test_read_only_sweep_dir_names_hydra_sweep_dir(cli, unwritable: Path) -> None:
    proc = cli("-m", "task=plan", "quant=none,8bit", f"hydra.sweep.dir={unwritable}/sweep")
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[0].startswith(f"error: cannot write the sweep dir {unwritable}/sweep:")
    assert "at:  hydra.sweep.dir" in proc.stderr


def test_os_errors_on_the_run_dir_become_user_errors(tmp_path: Path, monkeypatch) -> None:
    from gemma_run.app import writable

    e = writable.unwritable(Path("/data/runs"), OSError(errno.EROFS, "Read-only file system"))
    assert e.format().splitlines() == [
        "error: cannot write the run dir /data/runs: Read-only file system", "  at:  hydra.run.dir",
        "  fix: hydra.run.dir=/a/writable/dir (default: outputs/DATE/TIME under the directory you run gemma-run "
        "in), or fix the permissions of /data/runs"]
    assert writable.unwritable(Path("/r"), PermissionError(errno.EACCES, "Permission denied"), "sweep").key == \
        "hydra.sweep.dir"
    assert "resume=/writable/place/r" in writable.unwritable(Path("/r"), OSError(errno.EROFS, "x"),
                                                             resume="/r").fix

    def refuse(self, *args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied", str(self))

    monkeypatch.setattr(Path, "mkdir", refuse)
    with pytest.raises(GemmaRunError, match=r"cannot write the run dir .*: Permission denied") as caught:
        writable.check(tmp_path / "new")
    assert caught.value.key == "hydra.run.dir"


def test_api_run_into_an_unwritable_dir_is_a_user_error(compose_cfg, tmp_path: Path, monkeypatch) -> None:
    from gemma_run import run

    def refuse(self, *args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system", str(self))

    cfg = compose_cfg(["task=plan"])
    monkeypatch.setattr(Path, "mkdir", refuse)
    with pytest.raises(GemmaRunError, match="Read-only file system"):
        run(cfg, tmp_path / "run")


# ---- the disk fills up while training --------------------------------------------------------------------------


@pytest.mark.slow
def test_disk_full_at_a_checkpoint_names_the_last_good_one_and_the_resume_command(cli, tmp_path: Path,
                                                                                   alpaca4: Path) -> None:
    plugin = "+plugins.full={_target_:tests.helpers.disk_full_plugin.DiskFullAfter,order:50,saves:1}"
    env = {"PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    args = ["task=train", f"data.train_file={alpaca4}", "train.max_steps=4", "train.save_steps=2",
            "train.logging_steps=1", "train.max_seq_length=128"]
    proc = cli(*args, plugin, env=env, timeout=300)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    [run_dir] = run_dirs(tmp_path)
    lines = proc.stderr[proc.stderr.index("error: the disk is full"):].splitlines()
    assert lines[0].startswith(f"error: the disk is full: writing {run_dir}/checkpoint-4/optimizer.pt failed (No "
                               "space left on device)"), lines[0]
    assert "a checkpoint needs about" in lines[0] and "(the size of checkpoint-2)" in lines[0]
    assert lines[1] == "  at:  train.output_dir"
    assert "the last complete checkpoint, checkpoint-2" in lines[2]
    command = shlex.split(lines[2].split("with: ", 1)[1])
    assert command[0] == "gemma-run" and command[-1] == f"resume={run_dir}"
    assert json.loads((run_dir / "result.json").read_text())["status"] == "failed"

    # the command it gives continues the run from checkpoint-2 (without the plugin that filled the disk)
    proc = cli(*[a for a in command[1:] if a != plugin], timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((run_dir / "result.json").read_text())
    assert result["global_step"] == 4 and Path(result["resumed_from"]).name == "checkpoint-2"


def test_disk_full_detection(tmp_path: Path, monkeypatch) -> None:
    """OSError ENOSPC anywhere in the chain; torch.save's errno-less writer error only when space is short."""
    from collections import namedtuple

    from gemma_run.training import disk_full

    hydra = tmp_path / ".hydra"
    hydra.mkdir()
    (hydra / "overrides.yaml").write_text("- task=train\n- +env.vars.HF_TOKEN=hf_secret\n- resume=auto\n")
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(disk_full.shutil, "disk_usage", lambda path: usage(10, 10, 0))
    try:
        try:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(tmp_path / "x.bin"))
        except OSError as inner:
            raise RuntimeError("save failed") from inner
    except RuntimeError as e:
        err = disk_full.as_user_error(e, tmp_path, tmp_path, None)
    assert err is not None and f"writing {tmp_path / 'x.bin'} failed" in err.problem
    assert "starts from step 0" in err.fix and "hf_secret" not in err.fix
    assert err.fix.endswith(f"gemma-run task=train '+env.vars.HF_TOKEN=[REDACTED]' resume={tmp_path}")

    writer = RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")
    assert disk_full.as_user_error(writer, tmp_path, tmp_path, None) is not None
    monkeypatch.setattr(disk_full.shutil, "disk_usage", lambda path: usage(2**40, 0, 2**40))
    assert disk_full.as_user_error(writer, tmp_path, tmp_path, None) is None  # space left: some other failure
    assert disk_full.as_user_error(ValueError("bad value"), tmp_path, tmp_path, None) is None


# ---- schedule keys larger than the run ---------------------------------------------------------------------------


@pytest.mark.slow
def test_warmup_and_logging_steps_beyond_the_run_warn_and_the_final_step_is_logged(cli, tmp_path: Path,
                                                                                    alpaca4: Path) -> None:
    proc = cli("task=train", f"data.train_file={alpaca4}", "train.epochs=1", "train.warmup_steps=500",
               "train.logging_steps=10", "train.max_seq_length=128")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "train.warmup_steps=500 but this run has 4 optimizer steps" in proc.stderr
    assert "train.logging_steps=10 but this run has 4 optimizer steps" in proc.stderr
    [run_dir] = run_dirs(tmp_path)
    rows = [json.loads(line) for line in (run_dir / "losses.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [4] and "loss" in rows[0]
    assert len(json.loads((run_dir / "result.json").read_text())["warnings"]) == 2


# ---- the max_seq_length fix stays within the model's context ---------------------------------------------------


def test_max_seq_length_fix_never_exceeds_the_models_context(cli, tmp_path: Path) -> None:
    """tiny_gemma3 has max_position_embeddings=512; examples of ~600+ tokens must not get a fix of 1024."""
    long_text = " ".join(f"word{i}" for i in range(400))
    data = write_jsonl(tmp_path / "long.jsonl", [{"instruction": long_text, "output": "ok"}] * 2)
    proc = cli("task=train", f"data.train_file={data}", "train.max_steps=1", "train.max_seq_length=16")
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "examples are longer than train.max_seq_length=16" in proc.stderr
    fix = next(line for line in proc.stderr.splitlines() if line.strip().startswith("fix:"))
    assert "train.max_seq_length=512 (the model's context" in fix and "shorten or split" in fix
    assert "1024" not in fix


def test_length_fix_rules() -> None:
    from gemma_run.training.data import _length_fix

    assert _length_fix(300, 128, 8192, "x").startswith("train.max_seq_length=512 ")
    assert _length_fix(300, 128, 400, "x").startswith("train.max_seq_length=400 ")  # fits, rounded down to 400
    assert _length_fix(700, 128, 512, "x").startswith("train.max_seq_length=512 ")
    assert _length_fix(700, 512, 512, "x").startswith("shorten or split the examples")
    assert _length_fix(700, 128, None, "x").startswith("train.max_seq_length=1024 ")


# ---- bitsandbytes' 4-bit CPU kernels: every module in the fix ---------------------------------------------------


def _bnb4(skip: list[str]):
    from omegaconf import OmegaConf

    return OmegaConf.create({"backend": {"name": "bitsandbytes"}, "bits": 4, "skip_modules": skip})


def _layers(**linears: tuple[str, int]):
    """Two layers, each with the Linears ``name=(parent, out_features)`` (64 inputs), as a skeleton."""
    import torch

    skeleton = torch.nn.ModuleDict()
    for i in range(2):
        layer = torch.nn.Module()
        for name, (parent, out) in linears.items():
            if not hasattr(layer, parent):
                setattr(layer, parent, torch.nn.Module())
            setattr(getattr(layer, parent), name, torch.nn.Linear(64, out))
        skeleton[str(i)] = layer
    return skeleton


def test_cpu_4bit_fix_names_every_module_once() -> None:
    import torch

    from gemma_run.quant import bitsandbytes as quantization

    skeleton = _layers(q_proj=("self_attn", 48), o_proj=("self_attn", 64), down_proj=("mlp", 40))
    skeleton["lm_head"] = torch.nn.Linear(64, 500)
    with pytest.raises(GemmaRunError) as caught:
        quantization.check_cpu_4bit(_bnb4([]), skeleton, flags={"avx512_bf16"})
    assert "'quant.skip_modules=[lm_head,q_proj,down_proj]'" in caught.value.fix
    assert "4 such module(s): q_proj, down_proj" in caught.value.problem
    # the fix it gives is enough
    quantization.check_cpu_4bit(_bnb4(["lm_head", "q_proj", "down_proj"]), skeleton, flags={"avx512_bf16"})


def test_cpu_4bit_fix_names_a_router_without_unquantizing_every_projection() -> None:
    """Gemma 4's MoE router is a Linear named ``proj`` (few outputs in a tiny model): ``proj`` as a skip entry would
    end every q_proj/down_proj's name too, so the fix names ``router.proj``, and following it keeps the rest
    quantized."""
    from gemma_run.loading.compat import should_convert_module
    from gemma_run.quant import bitsandbytes as quantization

    skeleton = _layers(q_proj=("self_attn", 64), proj=("router", 4))
    with pytest.raises(GemmaRunError) as caught:
        quantization.check_cpu_4bit(_bnb4([]), skeleton, flags={"avx512_bf16"})
    assert "'quant.skip_modules=[lm_head,router.proj]'" in caught.value.fix
    assert "0.router.proj has 4 (2 such module(s): router.proj)" in caught.value.problem
    quantization.check_cpu_4bit(_bnb4(["lm_head", "router.proj"]), skeleton, flags={"avx512_bf16"})
    assert should_convert_module("0.self_attn.q_proj", ["lm_head", "router.proj"])
    quantization.check_cpu_4bit(_bnb4([]), skeleton, flags={"avx2"})  # other CPUs: no limit
