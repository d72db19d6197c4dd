"""The one place that reads a run config into the planner's plain arguments.

The training keys belong to the train task's groups; they are read with ``OmegaConf.select(..., default=)``
so the planner works whether or not those groups are in the config.
"""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig, OmegaConf

from gemma_run import quant as backends
from gemma_run.app.errors import ConfigError, GemmaRunError
from gemma_run.loading import random_weights
from gemma_run.planning.devices import cpu_memory, detect_gpus, parse_gpus, parse_size
from gemma_run.planning.plan import PlanInputs
from gemma_run.planning.training import TrainSpec

DEFAULT_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def _sel(cfg: DictConfig, key: str, default: Any) -> Any:
    value = OmegaConf.select(cfg, key, default=default)
    return default if value is None else value


def model_config(cfg: DictConfig) -> dict[str, Any]:
    """The architecture to plan: the checkpoint's config.json when model.path is loaded, else model.config."""
    from gemma_run.loading.checkpoint import architecture

    return architecture(cfg.model)


def num_layers(config: dict[str, Any]) -> int | None:
    """Decoder layers of a model.config, read without transformers."""
    text = config.get("text_config") or config
    return text.get("num_hidden_layers") or text.get("n_layer")


def train_spec(cfg: DictConfig) -> TrainSpec:
    targets = _sel(cfg, "lora.target_modules", list(DEFAULT_TARGETS))
    targets = (targets,) if isinstance(targets, str) else tuple(targets)
    kernel = _sel(cfg, "train.loss_kernel", "none")
    return TrainSpec(
        lora=bool(_sel(cfg, "lora.enabled", True)),
        lora_r=int(_sel(cfg, "lora.r", 16)),
        target_modules=targets,
        target_parameters=tuple(_sel(cfg, "lora.target_parameters", None) or ()),
        zero_stage=int(_sel(cfg, "deepspeed.stage", 0)),
        offload_optimizer=bool(_sel(cfg, "deepspeed.offload_optimizer", False)),
        offload_params=bool(_sel(cfg, "deepspeed.offload_params", False)),
        world=int(_sel(cfg, "launcher.nproc_per_node", 1)) * int(_sel(cfg, "launcher.nnodes", 1)),
        gradient_checkpointing=bool(_sel(cfg, "train.gradient_checkpointing", True)),
        seq_len=int(_sel(cfg, "plan.context", None) or _sel(cfg, "train.max_seq_length", 2048)),
        batch=int(_sel(cfg, "plan.batch", None) or _sel(cfg, "train.per_device_batch_size", 1)),
        loss_kernel=str(getattr(kernel, "value", kernel)),
    )


def gpus(cfg: DictConfig) -> tuple[tuple[int, ...], str]:
    """(bytes per GPU, where they came from): plan.gpus, else the GPUs found; capped by device_map.max_memory."""
    found, source = gpu_capacity(cfg)
    caps = dict(cfg.device_map.max_memory or {})
    out = []
    for i, size in enumerate(found):
        cap = caps.get(str(i))
        out.append(min(size, parse_size(cap, "device_map.max_memory")) if cap else size)
    return tuple(out), source if out else "none"


def gpu_capacity(cfg: DictConfig) -> tuple[tuple[int, ...], str]:
    """(bytes each GPU has, where that came from): plan.gpus, else the GPUs found (uncapped)."""
    given = list(_sel(cfg, "plan.gpus", []))
    if given:
        return tuple(parse_gpus(given)), "plan.gpus"
    return tuple(detect_gpus()), "detected"


def dtype(cfg: DictConfig, on_gpu: bool) -> str:
    name = cfg.model.dtype
    if name == "auto":
        name = "bfloat16" if on_gpu else "float32"
    from gemma_run.loading import check_dtype

    check_dtype(name, str(model_config(cfg).get("model_type", "")))
    return name


def from_cfg(cfg: DictConfig, mode: str) -> tuple[PlanInputs, dict[str, Any]]:
    """The plan inputs of a run config (``mode`` infer | train) and a note of where the GPUs came from."""
    gpu_list, source = gpus(cfg)
    capacity = gpu_capacity(cfg)[0]
    train_cap = _sel(cfg, "train.gpu_memory_cap", None) if mode == "train" else None
    if train_cap:  # training in a smaller card's memory (train.gpu_memory_cap): plan as if the GPU were that size
        limit = parse_size(train_cap, "train.gpu_memory_cap")
        gpu_list, capacity = tuple(min(g, limit) for g in gpu_list), tuple(min(g, limit) for g in capacity)
    dm = cfg.device_map
    # tensor parallel puts 1/N of every layer on each GPU: per GPU, the even split "balanced" plans
    strategy = "balanced" if dm.strategy.name == "tp" else dm.strategy.name
    on_gpu = bool(gpu_list) and strategy != "cpu" and not (strategy == "single" and dm.device == "cpu")
    q = cfg.quant
    quant = backends.from_cfg(q).planner_quant(on_gpu)
    cpu_cap = dm.max_memory.get("cpu") if dm.max_memory else None
    cpu_cap = cpu_cap or _sel(cfg, "plan.cpu_memory", None)
    ctx = _sel(cfg, "plan.context", None)
    new = int(cfg.generation.max_new_tokens)
    prompt = int(_sel(cfg, "plan.prompt_tokens", 128))
    if ctx is not None:
        prompt = min(prompt, int(ctx))
        new = int(ctx) - prompt
    inputs = PlanInputs(
        config=model_config(cfg), text_only=bool(cfg.model.text_only), dtype=dtype(cfg, on_gpu),
        quant=quant, quant_cpu_offload=bool(q.cpu_offload), mode=mode,
        prompt=prompt, new_tokens=new, batch=int(_sel(cfg, "plan.batch", None) or cfg.batch_size),
        gpus=gpu_list, strategy=strategy,
        single_device=str(dm.device).removeprefix("cuda:"),
        explicit_map=tuple((str(k), str(v)) for k, v in (dm.map or {}).items()),
        cpu_budget=parse_size(cpu_cap, "plan.cpu_memory") if cpu_cap else cpu_memory(),
        gpu_capacity=capacity,
        cpu_capacity=parse_size(_sel(cfg, "plan.cpu_memory", None), "plan.cpu_memory")
        if _sel(cfg, "plan.cpu_memory", None) else cpu_memory(),
        disk=bool(dm.offload_folder),
        random_build=random_weights.builds_in_memory(cfg.model, cfg.cache_dir),
        overhead_per_gpu=parse_size(_sel(cfg, "plan.overhead_per_gpu", "1GiB"), "plan.overhead_per_gpu"),
        train=train_spec(cfg),
        static_cache_len=static_cache_len(cfg, on_gpu, len(gpu_list), prompt + new) if mode == "infer" else 0,
    )
    return inputs, {"gpus_from": source}


def static_cache_len(cfg: DictConfig, on_gpu: bool, n_gpus: int, needed: int) -> int:
    """The fast engine's cache length when the run may decode on it, else 0 (``generation.engine``: fast, or
    auto on one GPU without a generate()-only key). The engine itself decides at run time from the loaded model
    (gemma_run.infer.generate.choose_engine), also by the tokens to generate, which the plan does not know: it
    counts the fast engine's bigger cache whenever it may run, so a plan that fits always fits."""
    from gemma_run.infer.engine import static_length

    g = cfg.generation
    engine = getattr(g.engine, "value", g.engine)
    one_gpu = cfg.device_map.strategy.name == "single" or n_gpus == 1
    auto_fast = (on_gpu and one_gpu and g.cache_implementation is None and float(g.repetition_penalty) == 1.0
                 and (g.cuda_graph is not False or bool(g.compile)))
    if engine == "fast" or (engine == "auto" and auto_fast):
        text = model_config(cfg).get("text_config") or model_config(cfg)
        return static_length(needed, text.get("max_position_embeddings") or text.get("n_positions"))
    return 0


def check(cfg: DictConfig) -> list[GemmaRunError]:
    """Bad plan input found without torch: sizes, context, batch, more GPUs than layers."""
    problems: list[GemmaRunError] = []
    given = list(_sel(cfg, "plan.gpus", []))
    n_gpus = 0
    try:
        n_gpus = len(parse_gpus(given)) if given else 0
    except GemmaRunError as e:
        problems.append(e)
    for key in ("plan.context", "plan.batch", "plan.prompt_tokens"):
        value = _sel(cfg, key, None)
        if value is not None and int(value) <= 0:
            problems.append(ConfigError(f"{key}={value} must be > 0", key=key, fix=f"{key}=4096" if "context" in key
                                        else f"{key}=1"))
    for key in ("plan.cpu_memory", "plan.overhead_per_gpu"):
        value = _sel(cfg, key, None)
        if value is not None:
            try:
                parse_size(value, key)
            except GemmaRunError as e:
                problems.append(e)
    layers = num_layers(model_config(cfg))
    if n_gpus and layers and n_gpus > layers and cfg.device_map.strategy.name in ("auto", "balanced",
                                                                                   "balanced_low_0", "sequential"):
        problems.append(ConfigError(f"plan.gpus lists {n_gpus} GPUs but {cfg.model.name} has {layers} decoder layers: "
                                    "a device map cannot give every GPU a layer", key="plan.gpus",
                                    fix=f"plan for at most {layers} GPUs"))
    mode = _sel(cfg, "plan.mode", "infer")
    if mode not in ("infer", "train"):
        problems.append(ConfigError(f"plan.mode={mode!r} is not infer or train", key="plan.mode",
                                    fix="plan.mode=infer"))
    return problems
