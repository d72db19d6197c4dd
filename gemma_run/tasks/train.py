"""task=train: LoRA / QLoRA / full fine-tuning through the HF Trainer, in this process or launched on N.

Everything that can be refused is refused here first (config, output dir, every data record, fp16 on Gemma 3)
before a model is loaded or a process started; resume picks its checkpoint once, here, for every rank.
"""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from gemma_run import quant
from gemma_run.app.errors import ConfigError, GemmaRunError
from gemma_run.distributed import launchers

log = logging.getLogger(__name__)


def validate(cfg: DictConfig) -> list[GemmaRunError]:
    t, d, ds, la = cfg.train, cfg.data, cfg.deepspeed, cfg.launcher
    problems: list[GemmaRunError] = []

    def need(ok: bool, problem: str, key: str, fix: str) -> None:
        if not ok:
            problems.append(ConfigError(problem, key=key, fix=fix))

    need(bool(d.train_file), "task=train needs data.train_file", "data.train_file",
         "data.train_file=/path/to/train.jsonl (formats: docs/train.md)")
    for key in ("per_device_batch_size", "gradient_accumulation_steps", "logging_steps", "save_steps"):
        need(t[key] >= 1, f"train.{key}={t[key]} must be >= 1", f"train.{key}", f"train.{key}=1")
    need(t.max_seq_length >= 8, f"train.max_seq_length={t.max_seq_length} is too short", "train.max_seq_length",
         "train.max_seq_length=1024")
    need(t.max_steps > 0 or t.epochs > 0, "neither train.max_steps nor train.epochs is > 0", "train.epochs",
         "train.epochs=1 or train.max_steps=100")
    need(0 <= t.warmup_ratio < 1, f"train.warmup_ratio={t.warmup_ratio} must be in [0, 1)", "train.warmup_ratio",
         "train.warmup_ratio=0.03")
    need(0 <= d.eval_split < 1, f"data.eval_split={d.eval_split} must be in [0, 1)", "data.eval_split",
         "data.eval_split=0.05")
    need(ds.stage in (0, 1, 2, 3), f"deepspeed.stage={ds.stage} is not a ZeRO stage", "deepspeed.stage",
         "deepspeed=zero2 or deepspeed=zero3")
    need(not ds.offload_params or ds.stage == 3, "deepspeed.offload_params needs ZeRO stage 3",
         "deepspeed.offload_params", "deepspeed=zero3_offload")
    backend = quant.from_cfg(cfg.quant)
    need(cfg.lora.enabled or not backend.quantized, "a quantized model cannot be fully fine-tuned "
         "(its weights are frozen integers)", "lora.enabled", "lora.enabled=true (QLoRA), or quant=none")
    need(backend.trains, f"quant={cfg.quant.name} ({backend.name}) is an inference format: transformers does not "
         f"train through {backend.name}'s {cfg.quant.name} weights", "quant", "quant=4bit (bitsandbytes NF4: QLoRA)")
    need(not backend.trains or backend.zero3_sharding or ds.stage != 3,
         f"{cfg.quant.bits}-bit weights cannot be sharded by ZeRO-3", "quant",
         "quant=4bit (QLoRA stores 4-bit weights in the training dtype for ZeRO-3), or deepspeed=zero2")
    try:
        launcher = launchers.from_cfg(la)
    except GemmaRunError as e:  # a _target_ that does not import
        launcher = None
        problems.append(e)
    else:
        problems += launcher.problems()
    if t.gpu_memory_cap:
        from gemma_run.planning.devices import parse_size

        try:
            parse_size(t.gpu_memory_cap, "train.gpu_memory_cap")
        except GemmaRunError as e:
            problems.append(e)
    if ds.stage > 0 or (launcher is not None and launcher.runs_deepspeed):
        need(importlib.util.find_spec("deepspeed") is not None, "deepspeed is not installed", "deepspeed",
             "pip install 'gemma-run[deepspeed]' (or deepspeed=none launcher=torchrun)")
    from gemma_run.training import activation_checkpointing

    problems += activation_checkpointing.check(cfg)
    return problems


def _check_writable(out: Path) -> None:
    """Fail now, not at the first checkpoint an hour in."""
    from gemma_run.app.writable import try_write

    try:
        try_write(out)
    except OSError as e:
        raise GemmaRunError(f"cannot write into the output dir {out}: {e.strerror}", key="train.output_dir",
                            fix="choose a writable train.output_dir (default: the run dir), or fix its "
                                "permissions") from None


def _resume_point(cfg: DictConfig, out: Path) -> tuple[Path | None, list[dict[str, str]]]:
    from gemma_run.training import checkpoint_integrity, logs

    if not cfg.resume:
        found = checkpoint_integrity.checkpoints(out)
        if found:
            raise GemmaRunError(f"{out} already holds checkpoints ({found[0][1].name}, ...) of an earlier run",
                                key="train.output_dir", fix=f"resume={out} to continue it, or choose another "
                                "train.output_dir (nothing was overwritten)")
        return None, []
    point = checkpoint_integrity.find_resume(out)
    if point.checkpoint is not None:
        logs.cut(out / logs.LOSSES, point.step)
    elif (out / logs.LOSSES).exists():
        logs.cut(out / logs.LOSSES, 0)
    skipped = [{"moved_to": str(p), "reason": why} for p, why in point.skipped]
    return point.checkpoint, skipped


# What fixes the data order and the schedule: a resumed run must keep them (less the keys that do not).
SAME_ON_RESUME = ("model", "quant", "train", "data", "lora", "deepspeed", "seed")
FREE_ON_RESUME = ("train.merge", "train.logging_steps", "train.save_steps", "train.save_total_limit",
                  "train.eval_steps", "train.dataloader_workers", "train.gradient_checkpointing",
                  "train.gpu_memory_cap", "train.checkpoint_layers", "train.fused_ops", "deepspeed.reason")


def _check_same_settings(cfg: DictConfig, run_dir: Path) -> None:
    """resume composes the config again from the command line: refuse one that changed the schedule."""
    from omegaconf import OmegaConf

    from gemma_run.distributed.launch import CONFIG

    saved_path = run_dir / CONFIG
    if not cfg.resume or not saved_path.is_file():
        return
    saved = OmegaConf.load(saved_path)
    changed = []
    for key in SAME_ON_RESUME:
        old = saved.get(key)
        old = OmegaConf.to_container(old, resolve=True) if OmegaConf.is_config(old) else old
        new = cfg[key]
        new = OmegaConf.to_container(new, resolve=True, enum_to_str=True) if OmegaConf.is_config(new) else new
        changed += _diff(old, new, key)
    if changed:
        raise GemmaRunError(f"resume: the settings differ from the run being continued ({'; '.join(changed[:5])})",
                            key=changed[0].split(":")[0], fix=f"repeat the first run's overrides (saved in "
                            f"{saved_path}); a new schedule needs a new run")


def _diff(old: Any, new: Any, key: str) -> list[str]:
    if key in FREE_ON_RESUME:
        return []
    if isinstance(old, dict) and isinstance(new, dict):
        return [d for k in sorted(set(old) | set(new)) for d in _diff(old.get(k), new.get(k), f"{key}.{k}")]
    return [] if old == new else [f"{key}: {old!r} -> {new!r}"]


def run(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    from gemma_run.distributed.launch import launch, write_config
    from gemma_run.loading import choose_dtype
    from gemma_run.training import data, merge, trainer, zero_choice

    choice = zero_choice.resolve(cfg)  # deepspeed=auto (the preflight has usually done it already)
    warning = zero_choice.explicit_warning(cfg)
    if warning:
        log.warning(warning)
    out = trainer.output_dir(cfg, run_dir)
    _check_writable(out)
    checked = data.read_checked(cfg)
    choose_dtype(cfg.model, cfg.quant)  # refuses fp16 on Gemma 3 before any process starts
    _check_same_settings(cfg, run_dir)
    resume_from, skipped = _resume_point(cfg, out)
    write_config(cfg, run_dir)  # what every rank reads, and what a later resume is compared with
    if launchers.from_cfg(cfg.launcher).launches:
        result = launch(cfg, run_dir, resume_from, "training")
    else:
        result = trainer.train(cfg, run_dir, resume_from=resume_from, checked=checked)
    result["skipped_checkpoints"] = skipped
    result["deepspeed_choice"] = choice or warning or f"deepspeed={cfg.deepspeed.name} as given"
    if cfg.train.merge and "adapter" in result:  # node 0 merges; other nodes return no adapter
        result["merge"] = merge.merge(cfg, Path(result["adapter"]), out / "merged", replace=True)
    return result


def run_rank(cfg: DictConfig, run_dir: Path, resume_from: Path | None = None, main: bool = True) -> dict[str, Any]:
    """One rank started by the launcher (gemma_run.distributed.worker): the same training as in-process."""
    from gemma_run.training import trainer

    return trainer.train(cfg, run_dir, resume_from=resume_from)
