"""Schemas of the ``task`` group: which task runs (``_target_``) and its own options."""

from __future__ import annotations

from dataclasses import dataclass, field

from omegaconf import MISSING


@dataclass
class TaskConfig:
    name: str = MISSING
    # The task's entry point, called as fn(cfg, run_dir) -> dict (the task's result); declared once, in the task's
    # YAML (conf/task/<name>.yaml). A task that launches processes also has, in the same module,
    # run_rank(cfg, run_dir, resume_from, main) -> dict: what each launched rank runs (gemma_run.distributed.worker).
    _target_: str = MISSING
    # false for tasks that only describe a machine (task=plan can plan for GPUs you do not have): the checks of
    # this machine's devices (device_map_check) do not apply to them.
    uses_this_machine: bool = True
    # whether device_map=tp (tensor-parallel inference, one rank per GPU) runs this task
    tensor_parallel: bool = False
    # what the preflight plans before the task loads anything (gemma_run.planning.preflight): infer | train;
    # null: the task is not checked
    plan_as: str | None = None


@dataclass
class InferTaskConfig(TaskConfig):
    name: str = "infer"
    tensor_parallel: bool = True
    plan_as: str | None = "infer"


@dataclass
class TestTaskConfig(TaskConfig):
    """task=test, the environment doctor (docs/doctor.md)."""

    __test__ = False  # not a pytest test class despite its name
    name: str = "test"
    # Which checks run: all, families (versions, shims, env, gpus, quant, deepspeed, smoke) or single checks
    # (gpus.nccl); e.g. task.checks=[versions,smoke.load]
    checks: list[str] = field(default_factory=lambda: ["all"])
    # Smoke-test another model: a model option (gemma3_1b) or a checkpoint dir. null: the run's `model` group.
    model: str | None = None
    new_tokens: int = 8  # tokens generated on each device (min = max, so every device does the same work)
    nccl_timeout_s: float = 120.0  # an all-reduce that takes longer counts as hung (P2P over PCIe can hang)


@dataclass
class BenchTaskConfig(TaskConfig):
    """task=bench: speed and memory of the infer path, and how close decode comes to the bandwidth limit
    (docs/bench.md). Every combination of the three lists is measured."""

    name: str = "bench"
    plan_as: str | None = "infer"
    prompt_tokens: list[int] = field(default_factory=lambda: [128])  # synthetic prompts of exactly these lengths
    new_tokens: list[int] = field(default_factory=lambda: [128])  # generated per sequence (EOS is suppressed)
    batch_sizes: list[int] = field(default_factory=lambda: [1, 8])
    warmup: bool = True  # one untimed run of each combination first (pays compile/autotune and allocator growth)
    repeats: int = 1  # timed runs per combination; the row holds their medians
    # Bytes the bandwidth probe copies (read once + written once per copy); large enough to miss every cache.
    probe_bytes: str = "1GiB"
