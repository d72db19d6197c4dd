"""Launchers as components: each conf/launcher/*.yaml names its class by ``_target_``; the class builds the command
line, says whether it launches at all, and checks its keys. Each launched rank runs its task's ``run_rank``."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from gemma_run.app.errors import ConfigError
from gemma_run.distributed import launchers
from gemma_run.distributed.launch import worker_args
from gemma_run.distributed.launchers.deepspeed import DeepSpeed
from gemma_run.distributed.launchers.local import Local
from gemma_run.distributed.launchers.torchrun import Torchrun

WORKER = worker_args(Path("/runs/r1"), None)


@pytest.mark.parametrize("name, cls, launches", [("local", Local, False), ("torchrun", Torchrun, True),
                                                  ("deepspeed", DeepSpeed, True)])
def test_each_option_names_its_class(compose_cfg, name: str, cls: type, launches: bool) -> None:
    launcher = launchers.from_cfg(compose_cfg([f"launcher={name}"]).launcher)
    assert type(launcher) is cls and launcher.launches is launches
    assert launcher.tensor_parallel is (name == "torchrun") and launcher.runs_deepspeed is (name == "deepspeed")


def test_torchrun_command_static_master_and_rendezvous(compose_cfg) -> None:
    cfg = compose_cfg(["launcher=torchrun", "launcher.nnodes=2", "launcher.node_rank=1", "launcher.master_port=29611"])
    assert launchers.from_cfg(cfg.launcher).command(WORKER) == [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--nnodes=2", "--node_rank=1",
        "--master_addr=127.0.0.1", "--master_port=29611", "-m", "gemma_run.distributed.worker", "/runs/r1"]
    cfg = compose_cfg(["launcher=torchrun", "launcher.rdzv_endpoint=node0:29400"])
    cmd = launchers.from_cfg(cfg.launcher).command(worker_args(Path("/runs/r1"), Path("/runs/r1/checkpoint-2")))
    assert cmd[5:8] == ["--rdzv_backend=c10d", "--rdzv_endpoint=node0:29400", "--rdzv_id=gemma-run"]
    assert cmd[-2:] == ["--resume-from", "/runs/r1/checkpoint-2"]


def test_deepspeed_command_here_and_over_a_hostfile(compose_cfg) -> None:
    cfg = compose_cfg(["launcher=deepspeed", "launcher.nproc_per_node=4"])
    assert launchers.from_cfg(cfg.launcher).command(WORKER) == [
        sys.executable, "-m", "deepspeed.launcher.runner", "--master_addr=127.0.0.1", "--master_port=29500",
        "--num_gpus=4", "--num_nodes=1", "--node_rank=0", "--module", "gemma_run.distributed.worker", "/runs/r1"]
    cfg = compose_cfg(["launcher=deepspeed", "launcher.hostfile=/etc/hosts.ds", "launcher.nnodes=2",
                       "launcher.node_rank=1"])
    launcher = launchers.from_cfg(cfg.launcher)
    assert launcher.command(WORKER)[5:7] == ["--hostfile=/etc/hosts.ds", "--num_nodes=2"]
    assert not launcher.secondary_node  # with a hostfile this node starts every node's ranks
    assert launchers.from_cfg(compose_cfg(["launcher=torchrun", "launcher.node_rank=1"]).launcher).secondary_node


def test_local_refuses_several_processes_and_every_launcher_refuses_zero(compose_cfg) -> None:
    (e,) = launchers.from_cfg(compose_cfg(["launcher.nproc_per_node=2"]).launcher).problems()
    assert "launcher=local runs one process" in e.problem and e.key == "launcher"
    assert launchers.from_cfg(compose_cfg(["launcher=torchrun"]).launcher).problems() == []
    (e,) = launchers.from_cfg(compose_cfg(["launcher=torchrun", "launcher.nnodes=0"]).launcher).problems()
    assert "must be >= 1" in e.problem
    with pytest.raises(NotImplementedError):
        Local(compose_cfg().launcher).command(WORKER)


def test_a_bad_target_is_named() -> None:
    with pytest.raises(ConfigError) as e:
        launchers.from_cfg(OmegaConf.create({"_target_": "no_such.Launcher"}))
    assert e.value.key == "launcher._target_"
    with pytest.raises(ConfigError, match="not a Launcher subclass"):
        launchers.from_cfg(OmegaConf.create({"_target_": "gemma_run.quant.none.NoQuant"}))


def test_a_launched_rank_runs_what_the_task_target_names(compose_cfg) -> None:
    from gemma_run.tasks import infer, rank_entry, train

    assert rank_entry(compose_cfg().task) is infer.run_rank
    assert rank_entry(compose_cfg(["task=train"]).task) is train.run_rank
    with pytest.raises(ConfigError, match="no run_rank"):
        rank_entry(compose_cfg(["task=plan"]).task)


def test_task_target_is_declared_once() -> None:
    """The YAML names the task's entry point; the schema types it and declares no second one."""
    import dataclasses

    from gemma_run.schema import TASK_SCHEMAS

    for name, schema in TASK_SCHEMAS.items():
        default = {f.name: f.default for f in dataclasses.fields(schema)}["_target_"]
        assert default == "???", f"{schema.__name__} declares _target_ {default!r}; conf/task/{name}.yaml does"


def test_task_facts_come_from_the_task_schema(compose_cfg) -> None:
    """device_map=tp and the preflight read what the task's schema says, not its name."""
    from gemma_run.app.validation import validate

    cfg = compose_cfg()
    assert cfg.task.tensor_parallel and cfg.task.plan_as == "infer"
    train = compose_cfg(["task=train"]).task
    assert not train.tensor_parallel and train.plan_as == "train"
    assert compose_cfg(["task=plan"]).task.plan_as is None
    bad = {p.key: p.problem for p in validate(compose_cfg(["task.plan_as=fit"]))}
    assert "task.plan_as" in bad and "not infer, train or null" in bad["task.plan_as"]
