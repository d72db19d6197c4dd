"""Schemas of fine-tuning: ``train``, ``data``, ``lora`` (keys of the run) and the ``deepspeed`` and
``launcher`` groups, plus the ``train`` and ``merge`` task options.

The names mirror the usual hand-written training script's flags (per-device batch size, gradient accumulation,
...) so such a command maps onto overrides one to one (docs/train.md).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

from gemma_run.schema.tasks import TaskConfig


class FusedOps(Enum):
    auto = "auto"
    liger = "liger"
    none = "none"


class LossKernel(Enum):
    auto = "auto"
    liger = "liger"
    chunked = "chunked"
    none = "none"


@dataclass
class TrainConfig:
    max_seq_length: int = 1024  # longer examples are truncated (and counted in the result)
    per_device_batch_size: int = 1
    gradient_accumulation_steps: int = 1
    epochs: float = 1.0
    max_steps: int = -1  # > 0 overrides epochs
    learning_rate: float = 2.0e-4
    warmup_ratio: float = 0.0  # fraction of the steps spent warming up
    warmup_steps: int = 0  # > 0 overrides warmup_ratio
    lr_scheduler: str = "linear"  # any transformers SchedulerType: linear | cosine | constant | ...
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    logging_steps: int = 10
    save_steps: int = 100
    save_total_limit: int | None = 2  # keep the last K checkpoints; null keeps all
    eval_steps: int | None = None  # null: evaluate when saving (only when there is eval data)
    gradient_checkpointing: bool = False  # recompute activations: less memory, ~30% slower
    # With gradient_checkpointing: how many decoder layers recompute (the first ones; the last keep their
    # activations; training/activation_checkpointing.py says why). all | N | a fraction (0.5) | auto: as few as
    # the GPU's memory (train.gpu_memory_cap, else what is free) allows, all where it cannot tell (CPU, DeepSpeed).
    # Default all: keeping layers whole measured slower on a GPU (docs/benchmarks.md).
    checkpoint_layers: str = "all"
    # Where checkpoints, the adapter and logs go; null: the run dir.
    output_dir: str | None = None
    # auto: sdpa unless the model softcaps attention logits (Gemma 2: eager); eager | sdpa | flash_attention_2
    # force one (gemma_run/training/attention.py says why auto is safe).
    attn_implementation: str = "auto"
    # How the loss is computed (gemma_run/training/loss.py): none = the model's logits of every token (fp32 over
    # a 262k vocabulary: 8.6 GB at 4 x 2048 tokens), chunked = the same loss 256 tokens at a time in torch,
    # liger = Liger's fused Triton kernel (CUDA), auto = liger where it runs, else chunked.
    loss_kernel: LossKernel = LossKernel.auto
    # Fused kernels for the model body (gemma_run/training/fused_ops.py): liger = Liger's RoPE, RMSNorm and GeGLU
    # (Triton, CUDA; Gemma 2/3), none = the model's torch ops, auto = liger where it runs, else none.
    fused_ops: FusedOps = FusedOps.auto
    # torch.compile each decoder layer (gemma_run/training/compile_layers.py): inductor fuses a layer's small ops
    # (norms, rotary embedding, GeGLU, LoRA's adapters) and the first steps compile it once for all layers.
    # null: on a CUDA GPU without DeepSpeed (then fused_ops auto gives none: Liger's RoPE cannot be compiled);
    # true: anywhere (a CPU too); false: never.
    compile_layers: bool | None = None
    # Use at most this much of each GPU (e.g. 24GiB: a 3090's worth on an 80 GB card), through
    # torch.cuda.set_per_process_memory_fraction before the model loads; the preflight plans with it. null: all.
    gpu_memory_cap: str | None = None
    merge: bool = False  # after training, also write the base model with the adapter merged into <output>/merged
    dataloader_workers: int = 0


class DataFormat(Enum):
    # from the first record: messages -> chat, conversations -> sharegpt, instruction+output -> alpaca, text -> text
    auto = "auto"
    alpaca = "alpaca"  # {"instruction", "input" (optional), "output"}
    chat = "chat"  # {"messages": [{"role", "content"}, ...]} through the tokenizer's chat template
    sharegpt = "sharegpt"  # {"conversations": [{"from": human|gpt|system, "value"}, ...]}: trained as chat
    text = "text"  # {"text"}: plain language modelling


@dataclass
class DataConfig:
    train_file: str | None = None  # .jsonl, .json, .parquet, or a dir written by datasets' save_to_disk
    format: DataFormat = DataFormat.auto
    eval_file: str | None = None
    eval_split: float = 0.0  # fraction of train_file held out for evaluation when there is no eval_file
    # Several examples per row, kept apart by position ids (transformers' DataCollatorWithFlattening).
    packing: bool = False
    # alpaca and chat: loss on the responses only (prompts masked with -100); text always trains on everything.
    completion_only_loss: bool = True
    split_seed: int | None = None  # seed of the eval_split draw; null: the run's seed


@dataclass
class LoraConfig:
    enabled: bool = True  # false: full fine-tuning
    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    # every projection of attention and MLP; "all-linear" is also accepted as a single entry
    target_modules: list[str] = field(default_factory=lambda: [
        "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    # Parameters that are not inside a Linear but get an adapter too (peft's target_parameters), e.g. the 3D
    # expert weights of a mixture-of-experts model: [experts.gate_up_proj, experts.down_proj] for Gemma 4's MoE.
    target_parameters: list[str] = field(default_factory=list)
    bias: str = "none"
    # QLoRA: peft's prepare_model_for_kbit_training upcasts every unquantized weight to fp32, the frozen embedding
    # (262k x hidden: +2.7 GB at 4B, +5.6 GB at 27B) and so the residual stream too. false casts the embedding
    # back to bf16 (gemma_run/training/lora.py); true is peft's own behaviour.
    fp32_embeddings: bool = False


@dataclass
class DeepSpeedConfig:
    name: str = "none"
    stage: int = 0  # 0: no DeepSpeed; 2: shard optimizer state + gradients; 3: also the parameters
    offload_optimizer: bool = False  # optimizer state in CPU memory (DeepSpeed's CPU Adam)
    offload_params: bool = False  # stage 3 only: parameters in CPU memory
    overlap_comm: bool = True
    # deepspeed=auto: the stage is chosen from the plan when the run starts (no ZeRO when one process and one
    # GPU suffice, ZeRO-3 over several processes); `reason` then says why (also in result.json).
    auto: bool = False
    reason: str | None = None
    # Raw keys merged last into the rendered JSON (for what the group does not cover), e.g.
    # '+deepspeed.extra={zero_optimization:{reduce_bucket_size:5e7}}'
    extra: dict = field(default_factory=dict)


@dataclass
class LauncherConfig:
    # The launcher class (gemma_run.distributed.launchers): whether and how the run's processes are started.
    _target_: str = "gemma_run.distributed.launchers.local.Local"
    name: str = "local"
    nproc_per_node: int = 1  # processes on this node (one per GPU)
    nnodes: int = 1
    node_rank: int = 0
    master_addr: str = "127.0.0.1"
    master_port: int = 29500
    hostfile: str | None = None  # deepspeed launcher: "host slots=N" lines; it starts the other nodes over ssh
    rdzv_endpoint: str | None = None  # torchrun: host:port of the c10d rendezvous (elastic / several nodes)
    rdzv_id: str = "gemma-run"


@dataclass
class TrainTaskConfig(TaskConfig):
    name: str = "train"
    plan_as: str | None = "train"


@dataclass
class BenchTrainTaskConfig(TaskConfig):
    """task=bench_train: the train path's speed and memory on synthetic data (docs/train.md). Every example is
    train.max_seq_length tokens, train.per_device_batch_size of them a micro-batch (as the preflight plans)."""

    name: str = "bench_train"
    plan_as: str | None = "train"
    steps: int = 6  # optimizer steps timed
    warmup_steps: int = 2  # steps run first and not timed (allocator growth, autotune, first-call overheads)
    # Record the timed steps with torch.profiler and write profile.txt beside bench_train.json: the kernels that
    # took the device's time, most first (the timed steps run slower while recorded: tokens/s is then not quoted).
    profile: bool = False


@dataclass
class MergeTaskConfig(TaskConfig):
    name: str = "merge"
    # A training run dir (its adapter/ is used) or an adapter dir (adapter_config.json + safetensors).
    adapter: str | None = None
    output_dir: str | None = None  # null: <run dir>/merged
