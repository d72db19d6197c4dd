"""Schema of ``plan``: the memory plan of task=plan and of the preflight check before infer/train."""

from __future__ import annotations

from dataclasses import dataclass, field

from gemma_run.schema.tasks import TaskConfig


@dataclass
class PlanConfig:
    # Plan infer/train runs before loading anything and refuse one that cannot fit (with the plan's suggestion).
    preflight: bool = True
    # GPUs to plan for, by memory each: [24GiB,24GiB,24GiB] or [3x24GiB]. Empty: the GPUs found here (free memory).
    gpus: list[str] = field(default_factory=list)
    mode: str = "infer"  # what task=plan plans: infer | train (preflight follows the task)
    prompt_tokens: int = 128  # infer: tokens of the prompt (prefill)
    # Tokens per sequence the KV cache holds (infer) / the sequence length (train).
    # null: prompt_tokens + generation.max_new_tokens (infer), train.max_seq_length (train)
    context: int | None = None
    batch: int | None = None  # null: batch_size (infer), train.per_device_batch_size (train)
    cpu_memory: str | None = None  # CPU memory offloaded modules may use; null: this machine's RAM
    # Per GPU, memory no tensor shows: the CUDA context (~0.5 GiB) and the caching allocator's slack.
    overhead_per_gpu: str = "1GiB"


@dataclass
class PlanTaskConfig(TaskConfig):
    name: str = "plan"
    uses_this_machine: bool = False
