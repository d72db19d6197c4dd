"""Typed schemas of every config group, registered in Hydra's ConfigStore.

Each YAML option extends its group's base schema (``defaults: [base_<group>]``) so unknown keys and wrong
types fail when Hydra composes the run, before anything heavy is imported.
"""

from __future__ import annotations

from hydra.core.config_store import ConfigStore

from gemma_run.schema.config import RunConfig
from gemma_run.schema.device_map import DeviceMapConfig
from gemma_run.schema.env import EnvConfig
from gemma_run.schema.model import ModelConfig
from gemma_run.schema.plan import PlanTaskConfig
from gemma_run.schema.quant import QUANT_SCHEMAS, QuantConfig
from gemma_run.schema.tasks import BenchTaskConfig, InferTaskConfig, TestTaskConfig
from gemma_run.schema.train import (
    BenchTrainTaskConfig,
    DeepSpeedConfig,
    LauncherConfig,
    MergeTaskConfig,
    TrainTaskConfig,
)

GROUP_SCHEMAS: dict[str, type] = {
    "model": ModelConfig,
    "quant": QuantConfig,
    "device_map": DeviceMapConfig,
    "env": EnvConfig,
    "deepspeed": DeepSpeedConfig,
    "launcher": LauncherConfig,
}

TASK_SCHEMAS: dict[str, type] = {
    "infer": InferTaskConfig,
    "test": TestTaskConfig,
    "plan": PlanTaskConfig,
    "train": TrainTaskConfig,
    "merge": MergeTaskConfig,
    "bench": BenchTaskConfig,
    "bench_train": BenchTrainTaskConfig,
}

_registered = False


def register() -> None:
    """Store the schemas in Hydra's ConfigStore (idempotent; called by the entry points)."""
    global _registered
    if _registered:
        return
    cs = ConfigStore.instance()
    cs.store(name="base_config", node=RunConfig)
    for group, schema in GROUP_SCHEMAS.items():
        cs.store(group=group, name=f"base_{group}", node=schema)
    for name, schema in QUANT_SCHEMAS.items():  # one per quant backend, each extending base_quant
        cs.store(group="quant", name=name, node=schema)
    for name, schema in TASK_SCHEMAS.items():
        cs.store(group="task", name=f"base_{name}", node=schema)
    _registered = True
