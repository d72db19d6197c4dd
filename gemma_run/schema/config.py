"""The whole run: every group and top-level key, typed. A misspelt key or a wrong type fails at compose time."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from omegaconf import MISSING

from gemma_run.schema.device_map import DeviceMapConfig
from gemma_run.schema.env import EnvConfig
from gemma_run.schema.generation import GenerationConfig
from gemma_run.schema.model import ModelConfig
from gemma_run.schema.plan import PlanConfig
from gemma_run.schema.quant import QuantConfig
from gemma_run.schema.train import DataConfig, DeepSpeedConfig, LauncherConfig, LoraConfig, TrainConfig


@dataclass
class RunConfig:
    model: ModelConfig = MISSING
    quant: QuantConfig = MISSING
    device_map: DeviceMapConfig = MISSING
    env: EnvConfig = MISSING
    task: Any = MISSING  # typed by the chosen option's own schema (schema/tasks.py)
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    plan: PlanConfig = field(default_factory=PlanConfig)  # task=plan and the preflight check (schema/plan.py)
    # task=train (schema/train.py): the trainer, the data, the adapter, ZeRO, and how many processes
    train: TrainConfig = field(default_factory=TrainConfig)
    data: DataConfig = field(default_factory=DataConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    deepspeed: DeepSpeedConfig = MISSING
    launcher: LauncherConfig = MISSING

    # infer: one prompt, or a file of them (txt: one per line; jsonl: {"prompt": ...} or {"messages": [...]})
    prompt: str | None = None
    prompts_file: str | None = None
    chat: bool = False  # apply the tokenizer's chat template
    system_prompt: str | None = None
    batch_size: int = 1
    # Continue an interrupted run: a run dir to continue in, or `auto` (the newest run dir of this task).
    resume: str | None = None
    seed: int = 0
    # GPUs each job of a sweep gets from a cluster launcher (hydra/launcher=slurm|local_jobs).
    gpus_per_job: int = 1
    # The result.json key an optimising sweeper (hydra/sweeper=lr_search, Optuna) minimises, e.g. train_loss.
    objective: str | None = None

    # Where random-weight checkpoints and other built artefacts are cached.
    cache_dir: str = "${oc.env:GEMMA_RUN_CACHE,${oc.env:HOME,.}/.cache/gemma-run}"
    # The plugin pipeline: name -> {_target_, order, ...}; run in ascending `order`.
    # Add your own: +plugins.mine={_target_:my_pkg.MyPlugin,order:25}; remove one: ~plugins.preflight
    plugins: dict[str, Any] = field(default_factory=dict)
