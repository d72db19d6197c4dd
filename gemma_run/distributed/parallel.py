"""Tensor-parallel inference (``device_map=tp``): every rank of ``launcher=torchrun`` holds a slice of each layer.

transformers shards the weights itself (its ``tp_plan``: q/k/v/gate/up split by output columns, o/down by input
rows, one all-reduce after each) and starts the process group (nccl on GPUs, gloo on CPUs). That needs the heads,
the KV heads and the MLP width to divide by the number of ranks, and a checkpoint it can shard: bitsandbytes and
torchao weights cannot be, and a random model built in memory never goes through the sharding loader. All of this
is refused here, before any process starts, naming the key and the fix.

Every rank runs the same generation (each forward needs all ranks); rank 0 alone writes outputs.
"""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig, OmegaConf

from gemma_run import quant
from gemma_run.app import env
from gemma_run.app.errors import ConfigError, GemmaRunError
from gemma_run.distributed import launchers

# The sizes transformers' plan splits over the ranks (colwise q/k/v/gate/up, rowwise o/down). Gemma 4's global
# layers have their own KV head count (num_global_key_value_heads, fewer than the sliding layers') and its MoE
# layers split each expert's width (moe_intermediate_size): every one of them must divide.
SPLIT_SIZES = ("num_attention_heads", "num_key_value_heads", "num_global_key_value_heads", "intermediate_size",
               "moe_intermediate_size")


def is_tp(cfg: Any) -> bool:
    return cfg.device_map.strategy.name == "tp"


def world_size(cfg: Any) -> int:
    """The ranks the launcher starts: nproc_per_node x nnodes."""
    return int(cfg.launcher.nproc_per_node) * int(cfg.launcher.nnodes)


def rank() -> int:
    """This process's rank under torchrun (0 when not launched)."""
    return int(env.get("RANK", "0") or 0)


def text_config(config: dict[str, Any]) -> dict[str, Any]:
    """The language model's config of a (possibly multimodal) config dict."""
    return config.get("text_config") or config


def _split_error(bad: list[str], world: int, source: str) -> ConfigError:
    return ConfigError(f"device_map=tp splits every layer over {world} ranks, but {source} has {', '.join(bad)}, "
                       f"not divisible by {world}", key="launcher.nproc_per_node",
                       fix="launcher.nproc_per_node=<a divisor of those numbers>, or device_map=balanced (layers "
                           "split over the GPUs, no divisibility needed)")


def indivisible(config: dict[str, Any], world: int) -> list[str]:
    text = text_config(config)
    return [f"{name}={text[name]}" for name in SPLIT_SIZES
            if isinstance(text.get(name), int) and text[name] % world != 0]


def validate(cfg: DictConfig) -> list[GemmaRunError]:
    """Everything about ``device_map=tp`` that can be refused from the config alone."""
    if not is_tp(cfg):
        return []
    problems: list[GemmaRunError] = []
    la, world = cfg.launcher, world_size(cfg)
    if not cfg.task.tensor_parallel:
        problems.append(ConfigError(f"device_map=tp is tensor-parallel inference; task={cfg.task.name} does not "
                                    "run it", key="device_map", fix="task=infer, or device_map=auto|balanced"))
    if not launchers.from_cfg(la).tensor_parallel or world < 2:
        problems.append(ConfigError(
            f"device_map=tp needs one process per GPU, but launcher={la.name} starts {world}", key="launcher",
            fix="launcher=torchrun launcher.nproc_per_node=<GPUs> (2 or more), or device_map=auto for one process"))
    if not quant.from_cfg(cfg.quant).tensor_parallel:
        problems.append(ConfigError(f"device_map=tp cannot shard quant={cfg.quant.name} weights (bitsandbytes and "
                                    "torchao weights are not tensor-parallel)", key="quant",
                                    fix="quant=none (bf16 weights, split over the GPUs), or device_map=balanced "
                                        "with the quantized model"))
    from gemma_run.loading.checkpoint import uses_random

    if uses_random(cfg.model) and cfg.model.random_storage.name == "memory":
        problems.append(ConfigError("device_map=tp loads through transformers' sharding loader, which a random "
                                    "model built in memory bypasses", key="model.random_storage",
                                    fix="model.random_storage=disk (the checkpoint is built once into cache_dir)"))
    if cfg.device_map.max_memory or cfg.device_map.offload_folder:
        problems.append(ConfigError("device_map=tp puts each rank's slice on that rank's device; a memory budget or "
                                    "disk offload does not apply", key="device_map.max_memory",
                                    fix="drop device_map.max_memory / device_map.offload_folder"))
    engine = getattr(cfg.generation.engine, "value", cfg.generation.engine)
    if engine == "fast" or cfg.generation.compile:
        problems.append(ConfigError("the fast (compiled / CUDA-graph) engine runs a model on one device; a "
                                    "tensor-parallel model generates through generate()", key="generation.engine",
                                    fix="generation.engine=auto (or hf), generation.compile unset"))
    if world >= 2:
        config = OmegaConf.to_container(cfg.model.config, resolve=True)
        bad = indivisible(config, world)  # type: ignore[arg-type]
        if bad:
            problems.append(_split_error(bad, world, f"model.config ({cfg.model.name})"))
    return problems


def check_checkpoint(config: dict[str, Any], world: int, path: Any) -> None:
    """The checkpoint's own config.json (what is loaded, whatever model.config says) must split over ``world``."""
    bad = indivisible(config, world)
    if bad:
        raise _split_error(bad, world, f"{path}/config.json")


def from_pretrained_kwargs() -> dict[str, Any]:
    """What asks transformers for its tensor-parallel load: ``distributed_config=DistributedConfig(tp_plan=
    "auto")`` where that exists (it took over from the ``tp_plan`` argument, deprecated after 5.17), else
    ``tp_plan="auto"`` (transformers 4.5x-5.17)."""
    try:
        from transformers.distributed import DistributedConfig
    except ImportError:
        return {"tp_plan": "auto"}
    fields = getattr(DistributedConfig, "__dataclass_fields__", {})
    if "tp_plan" in fields:
        return {"distributed_config": DistributedConfig(tp_plan="auto")}
    return {"tp_plan": "auto"}


def bytes_per_rank(local: dict[str, int]) -> dict[str, dict[str, int]]:
    """Every rank's bytes of parameters per device (collective: every rank must call it)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return {"0": local}
    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, local)
    return {str(i): g for i, g in enumerate(gathered)}
