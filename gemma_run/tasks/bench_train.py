"""task=bench_train: tokens/s, MFU and peak memory of the train path, on synthetic text.

It runs task=train's own code (``training.trainer.train``: the loader, LoRA/QLoRA, the loss kernel, attention,
DeepSpeed, the HF Trainer) for ``task.warmup_steps + task.steps`` optimizer steps on examples of (at most, cut at a
word) ``train.max_seq_length`` tokens, ``train.per_device_batch_size`` per device, and times the last
``task.steps`` only (the first steps pay allocator growth, autotuning and first-call overheads). tokens/s is
per the median timed step: the steady state of a long run, which one-off stalls do not move (a fresh machine's
first run can stall one step for several times a step's length; such a stall is a rounding error in a real run's
thousands of steps, but not in a handful of timed ones); ``tokens_per_second_mean`` (over the timed steps'
total) and every step's seconds (``step_seconds``) are in the row too. MFU uses the model FLOPs of
``training.flops`` against the device's datasheet peak. The row goes to ``bench_train.json`` and result.json (so
a ``-m`` sweep over train.loss_kernel / train.attn_implementation / quant / deepspeed tabulates the runs).
The plain Trainer setup to compare with is the preset ``+experiment=bench/train_4b_lora_baseline`` (eager
attention, the full-logits loss, no fused or compiled kernels, no DeepSpeed).
"""

from __future__ import annotations

import copy
import json
import logging
import random
import statistics
import time
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from gemma_run.app.errors import ConfigError, GemmaRunError
from gemma_run.distributed import launchers

log = logging.getLogger(__name__)

WORDS = "the quick brown fox jumps over the lazy dog while a model trains on the GPUs you have".split()
BENCH_JSON = "bench_train.json"


def bench_cfg(cfg: DictConfig, data_file: Path | str) -> DictConfig:
    """The train config the bench runs: its shape from task.*, no checkpoints, no eval, a loss every step."""
    t = cfg.task
    out = copy.deepcopy(cfg)
    out.data.train_file, out.data.eval_file, out.data.eval_split = str(data_file), None, 0.0
    out.data.format = "text"
    out.train.max_steps = int(t.warmup_steps) + int(t.steps)
    out.train.save_steps, out.train.logging_steps, out.train.merge = 10**9, 1, False
    out.train.output_dir = None
    return out


def validate(cfg: DictConfig) -> list[GemmaRunError]:
    from gemma_run.tasks import train

    t = cfg.task
    problems = [ConfigError(f"task.{k}={t[k]} must be >= {low}", key=f"task.{k}", fix=f"task.{k}={fix}")
                for k, low, fix in (("steps", 1, 6), ("warmup_steps", 0, 2)) if int(t[k]) < low]
    if launchers.from_cfg(cfg.launcher).launches:
        problems.append(ConfigError("task=bench_train runs in this process", key="launcher",
                                    fix="launcher=local (benchmark several processes with task=train)"))
    return problems + [p for p in train.validate(bench_cfg(cfg, "synthetic.jsonl")) if p.key != "launcher"]


def _fitted_text(tokenizer: Any, rnd: random.Random, seq_len: int) -> tuple[str, int]:
    """Random words cut to the longest prefix whose training row (bos, text, eos) has at most seq_len tokens."""
    from gemma_run.training import data

    words = rnd.choices(WORDS, k=seq_len + 8)  # every word is at least one token: the whole is too long

    def length(k: int) -> int:
        return len(data.tokenize(tokenizer, {"text": " ".join(words[:k])}, "text", "bench", False)["input_ids"])

    low, high = 1, len(words)  # length(low) <= seq_len < length(high)
    while high - low > 1:
        mid = (low + high) // 2
        low, high = (mid, high) if length(mid) <= seq_len else (low, mid)
    return " ".join(words[:low]), length(low)


def synthetic_data(path: Path, tokenizer: Any, records: int, seq_len: int, seed: int) -> tuple[Path, float]:
    """``records`` text records of (nearly always exactly) seq_len tokens; returns the file and the mean length."""
    rnd = random.Random(seed)
    lengths = []
    with path.open("w") as f:
        for _ in range(records):
            text, n = _fitted_text(tokenizer, rnd, seq_len)
            lengths.append(n)
            f.write(json.dumps({"text": text}) + "\n")
    return path, sum(lengths) / len(lengths)


def _timer(warmup: int = 0, steps: int = 0, profile: Path | None = None):  # -> transformers.TrainerCallback
    """The step timer; with ``profile``, it also records steps ``warmup + 1 .. warmup + steps`` with torch.profiler
    and writes the table to that path."""
    import torch
    from transformers import TrainerCallback

    from gemma_run.bench.profile import Recorder

    class StepTimer(TrainerCallback):
        """Wall time at the start and at the end of every optimizer step (GPU work finished)."""

        def __init__(self) -> None:
            self.ends: list[float] = []
            self.start = 0.0
            self.recorder = Recorder() if profile else None

        def _now(self) -> float:
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            return time.perf_counter()

        def on_train_begin(self, args, state, control, **kwargs):
            self.start = self._now()
            self._profile()

        def on_step_end(self, args, state, control, **kwargs):
            self.ends.append(self._now())
            self._profile()

        def on_train_end(self, args, state, control, **kwargs):
            if self.recorder is not None and self.recorder.recording:  # fewer steps ran than asked
                self.recorder.stop(profile)

        def _profile(self) -> None:
            if self.recorder is None:
                return
            if len(self.ends) == warmup and not self.recorder.recording:
                self.recorder.start()
            elif len(self.ends) == warmup + steps and self.recorder.recording:
                self.recorder.stop(profile)

    return StepTimer()


def _matmul_rate() -> float | None:
    """The GPU's bf16 matmul TFLOP/s measured now (gemma_run.bench.matmul_rate); None off CUDA."""
    import torch

    from gemma_run.bench import matmul_rate

    return matmul_rate.measure("cuda")["tflops"] if torch.cuda.is_available() else None


def _device() -> str | None:
    import torch

    return torch.cuda.get_device_name() if torch.cuda.is_available() else None


def run(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    from omegaconf import OmegaConf

    from gemma_run.app.context import write_json
    from gemma_run.loading import checkpoint, load_tokenizer
    from gemma_run.training import flops, trainer, zero_choice

    run_dir = Path(run_dir)
    t = cfg.task
    matmul = _matmul_rate()  # on the clean device, before anything loads
    seq, batch, accum = int(cfg.train.max_seq_length), int(cfg.train.per_device_batch_size), \
        int(cfg.train.gradient_accumulation_steps)
    zero_choice.resolve(cfg)
    records = (int(t.warmup_steps) + int(t.steps)) * batch * accum
    tokenizer = load_tokenizer(checkpoint.resolve(cfg.model, cfg.cache_dir), cfg.model)
    data_file, mean_len = synthetic_data(run_dir / "bench_data.jsonl", tokenizer, records, seq, int(cfg.seed))
    run_cfg = bench_cfg(cfg, data_file)
    profile = run_dir / "profile.txt" if bool(t.profile) else None
    timer = _timer(int(t.warmup_steps), int(t.steps), profile)
    result = trainer.train(run_cfg, run_dir, callbacks=[timer], save=False)
    warm, steps = int(t.warmup_steps), int(t.steps)
    if len(timer.ends) < warm + steps:
        raise GemmaRunError(f"only {len(timer.ends)} of {warm + steps} steps ran (too few examples?)",
                            key="task.steps", fix="report this: the synthetic data should fill every step")
    begin = timer.ends[warm - 1] if warm else timer.start
    seconds = timer.ends[warm + steps - 1] - begin
    step_seconds = [b - a for a, b in zip([timer.start, *timer.ends], timer.ends, strict=False)]
    median_step = statistics.median(step_seconds[warm:warm + steps])
    tokens_per_step = round(batch * mean_len * accum)  # the tokens trained on (padding, if any, not counted)
    tps = tokens_per_step / median_step  # the steady state a long run sees (one-off stalls do not move it)
    tps_mean = tokens_per_step * steps / seconds
    lora = bool(cfg.lora.enabled)
    fl = flops.per_token(OmegaConf.to_container(cfg.model.config, resolve=True), bool(cfg.model.text_only),
                         seq, lora=lora, lora_params=int(result["trainable_parameters"]) if lora else 0)
    device = _device()
    peak = flops.peak_tflops(device, result["dtype"])
    losses = [json.loads(line)["loss"] for line in (run_dir / "losses.jsonl").read_text().splitlines()
              if "loss" in json.loads(line)]
    row = {
        "model": cfg.model.name, "quant": cfg.quant.name, "lora": lora,
        "loss_kernel": result["loss_kernel"], "attn_implementation": result["attn_implementation"],
        "deepspeed_stage": result["deepspeed_stage"], "deepspeed_choice": cfg.deepspeed.reason,
        "gradient_checkpointing": result["gradient_checkpointing"], "packing": bool(cfg.data.packing),
        "fused_ops": result.get("fused_ops"), "compile_layers": result.get("compile_layers", 0),
        "compile_layers_graphs": result.get("compile_layers_graphs"),
        "compile_layers_graph_breaks": result.get("compile_layers_graph_breaks"),
        "checkpointed_layers": result.get("checkpointed_layers"),
        "decoder_layers": result.get("decoder_layers"), "checkpoint_layers_why": result.get("checkpoint_layers_why"),
        "seq_len": seq, "batch_size": batch, "tokens_per_step": tokens_per_step,
        "timed_steps": steps, "warmup_steps": warm, "timed_seconds": round(seconds, 3),
        # every step's seconds, warm-up included: a slow step among the timed ones shows here
        "step_seconds": [round(x, 3) for x in step_seconds],
        "tokens_per_second_mean": round(tps_mean, 1),  # over the timed steps' total, one-off stalls included
        "tokens_per_second": round(tps, 1), "flops_per_token": fl["flops_per_token"],
        "model_tflops": round(tps * fl["flops_per_token"] / 1e12, 2), "peak_tflops": peak,
        "mfu": round(tps * fl["flops_per_token"] / (peak * 1e12), 4) if peak else None,
        "matmul_tflops_measured": round(matmul, 1) if matmul else None,
        "mfu_6n": round(flops.mfu_6n(fl["matmul_params"], tps, matmul), 4) if matmul else None,
        "peak_memory_gib": result.get("peak_memory_gib"),
        "peak_memory_bytes": int(result["peak_memory_gib"] * 2**30) if result.get("peak_memory_gib") else None,
        "gpu_memory_cap_bytes": result.get("gpu_memory_cap_bytes"),
        "first_loss": losses[0] if losses else None, "final_loss": losses[-1] if losses else None,
        "train_loss": result["train_loss"], "trainable_parameters": result["trainable_parameters"],
        "device": device or "cpu", "dtype": result["dtype"],
        "profiled": profile is not None,
    }
    write_json(run_dir / BENCH_JSON, row)
    print(table([row]))
    if profile is not None:
        log.info("the timed steps' profile (they ran slower while recorded): %s", profile)
    return {**row, "bench_train": str(run_dir / BENCH_JSON), **({"profile": str(profile)} if profile else {})}


COLUMNS = (("setup", "{}"), ("tokens/s", "{:,.0f}"), ("MFU", "{:.1%}"), ("peak GiB", "{:.2f}"),
           ("final loss", "{:.4f}"))


def setup_name(row: dict[str, Any]) -> str:
    quant = "QLoRA" if row["quant"] != "none" and row["lora"] else ("LoRA" if row["lora"] else "full")
    zero = f" zero{row['deepspeed_stage']}" if row["deepspeed_stage"] else ""
    fused = " fused" if row.get("fused_ops") == "liger" else ""
    fused += " compiled" if row.get("compile_layers") else ""
    ckpt = f" ckpt {row['checkpointed_layers']}/{row['decoder_layers']}" \
        if row.get("gradient_checkpointing") and row.get("decoder_layers") else ""
    return f"{row['model']} {quant} {row['attn_implementation']} loss={row['loss_kernel']}{fused}{ckpt}{zero}"


def table(rows: list[dict[str, Any]]) -> str:
    """A markdown table of bench_train rows."""
    def cell(row: dict[str, Any], name: str, fmt: str) -> str:
        value = setup_name(row) if name == "setup" else row[{"tokens/s": "tokens_per_second", "MFU": "mfu",
                                                             "peak GiB": "peak_memory_gib",
                                                             "final loss": "final_loss"}[name]]
        return "-" if value is None else fmt.format(value)

    lines = ["| " + " | ".join(n for n, _ in COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(cell(r, n, f) for n, f in COLUMNS) + " |" for r in rows]
    return "\n".join(lines)
