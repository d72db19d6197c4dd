"""One training process: the HF Trainer built from the run config, on the model from the one loading path.

Runs the same way in-process (launcher=local) and in every rank started by torchrun or the deepspeed launcher
(gemma_run.distributed.worker). Rank 0 alone writes the adapter, the loss log and the curve; the Trainer does the rest.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from gemma_run import quant
from gemma_run.app import env
from gemma_run.app.errors import GemmaRunError
from gemma_run.training import checkpoint_integrity, data, deepspeed_config, disk_full, logs
from gemma_run.training import lora as lora_setup

log = logging.getLogger(__name__)

ADAPTER = "adapter"


def output_dir(cfg: DictConfig, run_dir: Path) -> Path:
    return Path(cfg.train.output_dir).expanduser() if cfg.train.output_dir else Path(run_dir)


def world() -> tuple[int, int, int]:
    """(rank, local_rank, world_size) as the launcher set them; (0, 0, 1) in-process."""
    return int(env.get("RANK", "0")), int(env.get("LOCAL_RANK", "0")), int(env.get("WORLD_SIZE", "1"))


def _init_distributed(ds: dict[str, Any] | None, master_port: int) -> None:
    """DeepSpeed needs a process group even for one process, and ZeRO-3 needs it before the model is built."""
    import torch

    if ds is None:
        return
    if env.get("RANK") is None:  # one process, no launcher: else DeepSpeed looks for MPI
        env.export({"RANK": 0, "WORLD_SIZE": 1, "LOCAL_RANK": 0, "MASTER_ADDR": "127.0.0.1",
                    "MASTER_PORT": master_port}, override=False)
    import deepspeed

    deepspeed.init_distributed(dist_backend="nccl" if torch.cuda.is_available() else "gloo")


def _device_map(stage: int, world_size: int, local_rank: int) -> Any:
    """ZeRO-3 places the weights itself (no map); several processes: each its own device; else the config's."""
    import torch

    if stage == 3:
        return None
    if world_size > 1 or stage > 0:
        return {"": local_rank if torch.cuda.is_available() else "cpu"}
    return "config"


def _load_cfg(cfg: DictConfig, dtype: str, stage: int) -> DictConfig:
    """The config the loader gets: training attention, and 4-bit storage ZeRO-3 can shard."""
    from gemma_run.training import attention

    out = copy.deepcopy(cfg)
    attn, why = attention.choose(cfg.train.attn_implementation, cfg.model)
    log.info("attention: %s (%s)", attn, why)
    out.model.attn_implementation = attn
    for key, value in (quant.from_cfg(cfg.quant).zero3_overrides(dtype) if stage == 3 else {}).items():
        log.info("QLoRA + ZeRO-3: quant.%s %s -> %s (ZeRO shards tensors of the training dtype)",
                 key, cfg.quant[key], value)
        out.quant[key] = value
    return out


def arguments(cfg: DictConfig, out: Path, dtype: str, ds: dict[str, Any] | None, has_eval: bool) -> Any:
    """TrainingArguments from the `train` keys (DeepSpeed's "auto" values are filled from these)."""
    import torch
    from transformers import TrainingArguments

    t = cfg.train
    eval_steps = t.eval_steps or t.save_steps
    # transformers 5.2x renamed gradient_checkpointing to activation_checkpointing; older 5.x has only the former
    names = {f.name for f in dataclasses.fields(TrainingArguments)}
    ckpt = "activation_checkpointing" if "activation_checkpointing" in names else "gradient_checkpointing"
    return TrainingArguments(
        output_dir=str(out),
        per_device_train_batch_size=t.per_device_batch_size,
        per_device_eval_batch_size=t.per_device_batch_size,
        gradient_accumulation_steps=t.gradient_accumulation_steps,
        num_train_epochs=t.epochs,
        max_steps=t.max_steps,
        learning_rate=t.learning_rate,
        warmup_steps=t.warmup_steps if t.warmup_steps > 0 else t.warmup_ratio,  # a float < 1 is a ratio
        lr_scheduler_type=t.lr_scheduler,
        weight_decay=t.weight_decay,
        max_grad_norm=t.max_grad_norm,
        logging_steps=t.logging_steps,
        save_strategy="steps",
        save_steps=t.save_steps,
        save_total_limit=t.save_total_limit,
        eval_strategy="steps" if has_eval else "no",
        eval_steps=eval_steps if has_eval else None,
        bf16=dtype == "bfloat16",
        fp16=dtype == "float16",
        **{ckpt: t.gradient_checkpointing,
           f"{ckpt}_kwargs": {"use_reentrant": False} if t.gradient_checkpointing else None},
        deepspeed=ds,
        seed=cfg.seed,
        data_seed=cfg.seed,
        report_to=["tensorboard"],
        label_names=["labels"],  # a peft model hides the forward signature the Trainer would read them from
        dataloader_num_workers=t.dataloader_workers,
        ddp_find_unused_parameters=False,
        use_cpu=not torch.cuda.is_available(),
        disable_tqdm=False,
        include_num_input_tokens_seen=True,  # for tokens/s (padding included: none when packing)
        # no metric reads eval logits: keeping them would hold [examples, seq, vocab] (and the fused loss
        # path returns none)
        prediction_loss_only=True,
    )


def _parameters(model: Any) -> tuple[int, int]:
    """(trainable, total) parameters; peft counts 4-bit packed and ZeRO-3 partitioned weights correctly."""
    if hasattr(model, "get_nb_trainable_parameters"):
        return model.get_nb_trainable_parameters()
    sizes = [(getattr(p, "ds_numel", p.numel()), p.requires_grad) for p in model.parameters()]
    return sum(n for n, grad in sizes if grad), sum(n for n, _ in sizes)


def _wants_token_type_ids(model: Any) -> bool:
    import inspect

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "token_type_ids" in inspect.signature(base.forward).parameters


def _context(path: Path, model_cfg: DictConfig) -> int | None:
    """The checkpoint's context length (its config.json; else the model group's config)."""
    import json

    from omegaconf import OmegaConf

    config_file = Path(path) / "config.json"
    config = json.loads(config_file.read_text()) if config_file.is_file() else \
        OmegaConf.to_container(model_cfg.config, resolve=True)
    return data.context_length(config)


def _loss_kernel(cfg: DictConfig, model: Any) -> tuple[str, str]:
    """(kernel, why): train.loss_kernel resolved (auto: liger on CUDA, else chunked); none where it cannot serve."""
    from gemma_run.training import loss, loss_hook

    asked = cfg.train.loss_kernel.value if hasattr(cfg.train.loss_kernel, "value") else str(cfg.train.loss_kernel)
    kernel = loss.choose(asked)
    if kernel == "liger" and not loss.liger_available():
        raise GemmaRunError(f"train.loss_kernel=liger cannot run here: {loss.liger_unavailable()}",
                            key="train.loss_kernel", fix="train.loss_kernel=auto (chunked where Liger cannot run)")
    if kernel == "none":
        return kernel, "train.loss_kernel=none: the model's own logits and loss"
    why_not = loss_hook.usable(model)
    if why_not:
        log.warning("train.loss_kernel=%s: not used (%s); the model's own loss instead", asked, why_not)
        return "none", f"{asked} not usable: {why_not}"
    return kernel, f"train.loss_kernel={asked}"


def train(cfg: DictConfig, run_dir: Path, *, resume_from: Path | None = None,
          checked: data.Checked | None = None, callbacks: list[Any] | None = None, save: bool = True) -> dict[str, Any]:
    """Train in this process (one rank of N, or the only one); returns the result on every rank.

    ``callbacks``: more Trainer callbacks (task=bench_train's step timer); ``save=False`` writes no adapter.
    Library console output (the Trainer's loss dicts, DeepSpeed's log) goes to stderr, not stdout."""
    from gemma_run.app.quiet import stdout_to_stderr

    with stdout_to_stderr():
        return _train(cfg, run_dir, resume_from=resume_from, checked=checked, callbacks=callbacks, save=save)


def _train(cfg: DictConfig, run_dir: Path, *, resume_from: Path | None, checked: data.Checked | None,
           callbacks: list[Any] | None, save: bool) -> dict[str, Any]:
    import torch

    from gemma_run.loading import checkpoint, choose_dtype, load, load_tokenizer
    from gemma_run.training import activation_checkpointing, compile_layers, fused_ops, memory_cap

    rank, local_rank, world_size = world()
    # bad values fail now, not after loading
    activation_checkpointing.parse(cfg.train.checkpoint_layers)
    fused_ops.check_early(cfg.train.fused_ops, str(cfg.model.config.get("model_type", "")))
    compiled = compile_layers.choose(cfg.train.compile_layers, fused_ops.asked(cfg.train.fused_ops),
                                     cuda=torch.cuda.is_available(), deepspeed=int(cfg.deepspeed.stage) > 0)
    out = output_dir(cfg, run_dir)
    checked = checked or data.read_checked(cfg)
    dtype = choose_dtype(cfg.model, cfg.quant)
    # the data is tokenized before the model loads: a dataset that cannot train fails in seconds, not after
    # the minutes a large model takes to load
    path = checkpoint.resolve(cfg.model, cfg.cache_dir)
    tokenizer = load_tokenizer(path, cfg.model)
    prepared = data.prepare(cfg, tokenizer, checked, context=_context(path, cfg.model))
    ds = deepspeed_config.render(cfg.deepspeed)
    stage = int(cfg.deepspeed.stage)
    env.export({"TENSORBOARD_LOGGING_DIR": str(out / "tensorboard")}, override=True)
    _init_distributed(ds, cfg.launcher.master_port)
    torch.manual_seed(cfg.seed)
    # built before the model, so ZeRO-3 partitions the weights while they load (HfDeepSpeedConfig)
    args = arguments(cfg, out, dtype, ds, prepared.eval is not None)
    # The cap goes on before loading: a checkpoint loads into 4 bits tensor by tensor, random weights built in
    # memory unit by unit (gemma_run.loading.random_memory), both inside it, as training's peak is.
    cap = memory_cap.apply(cfg.train.gpu_memory_cap, "before loading")
    load_cfg = _load_cfg(cfg, dtype, stage)
    loaded = load(load_cfg, device_map=_device_map(stage, world_size, local_rank))
    model = loaded.model
    # The KV cache is for generation. Off also because, with a cache, transformers does not detect packed rows
    # (data.packing) from their position ids, and packed examples would attend to each other.
    model.config.use_cache = False
    # before peft: it patches the transformers model in place
    fused = fused_ops.apply(cfg.train.fused_ops, model, zero3=stage == 3, compiled=compiled.on)
    quantized = getattr(model, "is_loaded_in_4bit", False) or getattr(model, "is_loaded_in_8bit", False)
    # the Trainer's bf16/fp16 mixed precision is torch autocast when DeepSpeed is not in the run
    autocast = ds is None and dtype in ("bfloat16", "float16")
    model = lora_setup.apply(model, cfg.lora, quantized=quantized, sharded=stage == 3,
                             gradient_checkpointing=cfg.train.gradient_checkpointing, autocast=autocast)
    compile_layers.apply(compiled, model)  # after peft: the adapters are compiled into the layers
    if _wants_token_type_ids(model) and not cfg.data.packing:
        prepared.add_token_type_ids()
    kernel, kernel_why = _loss_kernel(cfg, model)
    log.info("loss: %s (%s)", kernel, kernel_why)
    ckpt: dict[str, Any] = {}  # the checkpointed layers, chosen as training begins (activation_checkpointing.callback)
    try:
        result = _fit(cfg, args, model, tokenizer, prepared, out, resume_from, rank, kernel,
                      [activation_checkpointing.callback(cfg, model, kernel, ckpt), *(callbacks or [])], save)
    except Exception as e:  # a full disk (checkpoint, loss log, adapter) becomes one message with the way back
        full = None if isinstance(e, GemmaRunError) else disk_full.as_user_error(e, out, Path(run_dir), model)
        if full is None:
            raise
        raise full from None
    finally:
        fused.restore()
        compiled.finish()
    if "choice" in ckpt:
        read = activation_checkpointing.checkpointed(model) if cfg.train.gradient_checkpointing else None
        if read is not None:  # read back from the layers after training: what really ran
            ckpt["choice"].checkpointed = read
        result.update(ckpt["choice"].record())
    result.update(fused.record())
    result.update(compiled.record())
    result.update(dtype=dtype, world_size=world_size, deepspeed_stage=stage, quant=cfg.quant.name,
                  quantized=bool(quantized), data=prepared.stats, base_model=str(loaded.path),
                  attn_implementation=load_cfg.model.attn_implementation, loss_kernel=kernel,
                  gradient_checkpointing=bool(cfg.train.gradient_checkpointing), **(cap or {}))
    return result


def _resumed_at(resume_from: Path | None) -> int | None:
    """The step of the checkpoint a run continues from (read before training: save_total_limit may rotate it out)."""
    if resume_from is None:
        return None
    import json

    return int(json.loads((Path(resume_from) / "trainer_state.json").read_text())["global_step"])


def _train_loss(trainer: Any, this_run: float, resumed_at: int | None) -> float:
    """The whole run's mean train loss. After a resume the Trainer's training_loss covers only the steps this
    process ran; the steps before the checkpoint come from its log history (logs.whole_run_loss)."""
    if resumed_at is None:
        return this_run
    return logs.whole_run_loss(trainer.state.log_history, resumed_at, this_run, trainer.state.global_step)


def _fit(cfg: DictConfig, args: Any, model: Any, tokenizer: Any, prepared: data.Prepared, out: Path,
         resume_from: Path | None, rank: int, kernel: str, callbacks: list[Any], save: bool) -> dict[str, Any]:
    import time

    import torch

    from gemma_run.training import loss_hook

    loss_path = out / logs.LOSSES
    warnings: list[str] = []
    trainer = loss_hook.trainer_class(kernel)(
        model=model, args=args, train_dataset=prepared.train, eval_dataset=prepared.eval,
        data_collator=prepared.collator, processing_class=tokenizer,
        callbacks=[checkpoint_integrity.completion_callback(), logs.loss_callback(loss_path), logs.log_at_saves(),
                   logs.schedule_callback(cfg, warnings), *callbacks])
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    resumed_at = _resumed_at(resume_from)
    start = time.perf_counter()
    try:
        output = trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    except torch.OutOfMemoryError as e:
        raise GemmaRunError(f"out of GPU memory while training: {str(e).splitlines()[0]}",
                            key="train.per_device_batch_size",
                            fix="halve train.per_device_batch_size (double gradient_accumulation_steps to keep the "
                                "batch), train.gradient_checkpointing=true (train.checkpoint_layers=all), quant=4bit, "
                                "or deepspeed=zero3") from e
    seconds = time.perf_counter() - start
    adapter = out / ADAPTER
    if save:
        trainer.save_model(str(adapter))  # every rank calls it (ZeRO-3 gathers); only rank 0 writes
    tokens = prepared.stats["train_tokens"]
    trainable, total = _parameters(model)
    result: dict[str, Any] = {
        "output_dir": str(out),
        "adapter": str(adapter) if save else None,
        "global_step": trainer.state.global_step,
        "train_loss": round(_train_loss(trainer, float(output.training_loss), resumed_at), 6),
        "train_seconds": round(seconds, 3),
        "resumed_from": str(resume_from) if resume_from else None,
        "train_samples_per_second": output.metrics.get("train_samples_per_second"),
        "epoch_tokens": tokens,
        "trainable_parameters": trainable,
        "parameters": total,  # one pass over the training data
        "tokens_seen": int(trainer.state.num_input_tokens_seen),  # all ranks, since step 0 (also when resumed)
    }
    if warnings:
        result["warnings"] = warnings
    if not resume_from and seconds > 0:
        result["tokens_per_second"] = round(result["tokens_seen"] / seconds, 1)
    if prepared.eval is not None:
        last = [e for e in trainer.state.log_history if "eval_loss" in e and e.get("step") == trainer.state.global_step]
        result["eval_loss"] = round(float(last[-1]["eval_loss"] if last else trainer.evaluate()["eval_loss"]), 6)
    if torch.cuda.is_available():
        result["peak_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 3)
    if rank == 0:
        curve = logs.plot(loss_path, out / logs.CURVE)
        result["loss_curve"] = str(curve) if curve else None
        result["losses"] = str(loss_path)
        result["tensorboard"] = str(out / "tensorboard")
    return result
