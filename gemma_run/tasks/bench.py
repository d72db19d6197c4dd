"""task=bench: how fast the infer path generates, and how close its decode comes to the memory-bandwidth limit.

The model is loaded and run exactly as task=infer runs it (``gemma_run.loading.load``, then
``infer.generate.generation_kwargs`` and ``generate_batch``), on synthetic prompts of exact token lengths. For
each (prompt_tokens, new_tokens, batch) combination: a warm-up run, then timed runs giving time to first token
(the prefill), decode tokens/s (tokens after the first over the time after it), total tokens/s, peak memory per
device and the fraction of the limit: bytes a decode step reads (the planner's weights in this quant mode + the
KV cache) x steps/s over the device's copy bandwidth, measured in the same run. Rows go to ``bench.json``.

On a GPU the copy is measured before the weights load, on the clean device, and again after: the limit divides by
the first. A large model built and quantized in this process can leave the probe's copy slower afterwards while
the weights themselves still copy at the clean rate (docs/bench.md); dividing by the lower figure would flatter
the fraction.
"""

from __future__ import annotations

import itertools
import logging
import statistics
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from gemma_run.app.errors import ConfigError, GemmaRunError

log = logging.getLogger(__name__)

CPU_PROBE_CAP = 256 * 2**20  # a CPU copy of this size already misses every cache; bigger only costs seconds


def _context(cfg: DictConfig) -> int | None:
    config = cfg.model.config
    text = config.get("text_config") or config
    value = text.get("max_position_embeddings") or text.get("n_positions")
    return int(value) if value else None


def validate(cfg: DictConfig) -> list[GemmaRunError]:
    """Empty or non-positive lists, combinations longer than the model's context, a bad probe size."""
    from gemma_run.planning.devices import parse_size

    t, problems = cfg.task, []
    for key in ("prompt_tokens", "new_tokens", "batch_sizes"):
        values = list(t[key])
        if not values or any(int(v) < 1 for v in values):
            problems.append(ConfigError(f"task.{key}={values} must be a non-empty list of numbers >= 1",
                                        key=f"task.{key}", fix=f"task.{key}=[{128 if 'tokens' in key else 1}]"))
    if t.repeats < 1:
        problems.append(ConfigError(f"task.repeats={t.repeats} must be >= 1", key="task.repeats", fix="task.repeats=1"))
    context = _context(cfg)
    if context and t.prompt_tokens and t.new_tokens and max(t.prompt_tokens) + max(t.new_tokens) > context:
        problems.append(ConfigError(f"prompt {max(t.prompt_tokens)} + {max(t.new_tokens)} new tokens exceed "
                                    f"{cfg.model.name}'s context of {context} tokens", key="task.prompt_tokens",
                                    fix="shorter task.prompt_tokens or task.new_tokens"))
    try:
        parse_size(t.probe_bytes, "task.probe_bytes")
    except GemmaRunError as e:
        problems.append(e)
    return problems


def run(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    from gemma_run.app.context import write_json
    from gemma_run.bench import bandwidth, report
    from gemma_run.infer.stats import reset_peak_memory
    from gemma_run.loading import load
    from gemma_run.planning.devices import parse_size

    reset_peak_memory()
    probe = parse_size(cfg.task.probe_bytes, "task.probe_bytes")
    clean = _clean_gpu_bandwidth(probe)
    loaded = load(cfg)
    tok = loaded.tokenizer
    tok.padding_side = "left"
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    device = loaded.input_device
    bw = bandwidth.measure(device, probe if device.type == "cuda" else min(probe, CPU_PROBE_CAP))
    bw = reference_bandwidth(clean, bw)
    if "after_loading" in bw:
        after = bw["after_loading"]
        log.info("bandwidth (copy, read + write) on %s: %.1f GB/s on the clean device, %.1f GB/s after loading; "
                 "the limit uses the first", bw["device"], bw["bytes_per_second"] / 1e9,
                 after["bytes_per_second"] / 1e9)
    else:
        log.info("bandwidth (copy, read + write) on %s: %.1f GB/s", bw["device"], bw["bytes_per_second"] / 1e9)
    from gemma_run.infer.engine import Decoder, choose_engine, fused_projections

    engine = choose_engine(cfg.generation, loaded.model)
    log.info("generation engine: %s", engine.describe())
    t = cfg.task
    rows = [_measure(cfg, loaded, engine, int(p), int(n), int(b), bw["bytes_per_second"])
            for p, n, b in itertools.product(t.prompt_tokens, t.new_tokens, t.batch_sizes)]
    g = cfg.generation
    cache = "static" if engine.name == "fast" else getattr(g.cache_implementation, "value", g.cache_implementation)
    data = {"model": cfg.model.name, "quant": cfg.quant.name, "dtype": loaded.dtype, "checkpoint": str(loaded.path),
            "load_seconds": loaded.load_seconds, "bytes_per_device": loaded.bytes_per_device,
            "generation": {"engine": engine.name, "engine_reason": engine.reason, "cache_implementation": cache,
                           "compile": engine.compile, "cuda_graph": engine.graph, "exact": engine.exact,
                           "step_attention": engine.attention or "model",
                           "fused_projections": fused_projections.count(loaded.model),
                           "do_sample": bool(g.do_sample), "sessions": Decoder.of(loaded.model).report()},
            "bandwidth": bw, "rows": rows, "environment": _environment()}
    path = write_json(Path(run_dir) / "bench.json", data)
    title = (f"bench: {cfg.model.name} quant={cfg.quant.name} dtype={loaded.dtype} engine={engine.name} "
             f"cache={cache or 'dynamic'} compile={engine.compile} cuda_graph={engine.graph} "
             f"step_attention={engine.attention or 'model'} fused={fused_projections.count(loaded.model)}; "
             "copy bandwidth "
             f"{bw['bytes_per_second'] / 1e9:.1f} GB/s on {bw['device']}")
    print(report.table(rows, title), flush=True)
    first = rows[0]
    return {"bench": str(path), "engine": engine.name, "compiled": engine.compile, "cuda_graph": engine.graph,
            "load_seconds": loaded.load_seconds, "bandwidth_gb_per_s":
            round(bw["bytes_per_second"] / 1e9, 2),
            **{k: first[k] for k in ("decode_tokens_per_second", "decode_throughput", "time_to_first_token_s",
                                     "total_tokens_per_second", "limit_tokens_per_second", "limit_fraction",
                                     "peak_memory_bytes")}}


def reference_bandwidth(clean: dict[str, dict[str, Any]], after: dict[str, Any]) -> dict[str, Any]:
    """The bandwidth the limit divides by: the device's copy on the clean device when it was measured (``clean``,
    by device), with the copy after loading kept under ``after_loading``; else the copy after loading."""
    if after["device"] not in clean:
        return after
    return {**clean[after["device"]], "when": "before loading", "after_loading": after}


def _clean_gpu_bandwidth(nbytes: int) -> dict[str, dict[str, Any]]:
    """Each visible GPU's copy bandwidth before anything is loaded ({"cuda:0": bandwidth.measure(...), ...});
    empty without CUDA."""
    import torch

    from gemma_run.bench import bandwidth

    if not torch.cuda.is_available():
        return {}
    return {f"cuda:{i}": bandwidth.measure(f"cuda:{i}", nbytes) for i in range(torch.cuda.device_count())}


def _measure(cfg: DictConfig, loaded: Any, engine: Any, prompt: int, new: int, batch: int,
             bandwidth: float) -> dict[str, Any]:
    """One combination: warm-up, ``task.repeats`` timed runs (medians), the bytes per step and the limit."""
    import time

    import torch

    from gemma_run.bench import limit
    from gemma_run.bench.prompts import token_ids
    from gemma_run.infer import generate as gen
    from gemma_run.infer.stats import TimingStreamer, peak_memory, reset_peak_memory

    model, tok, device = loaded.model, loaded.tokenizer, loaded.input_device
    g = OmegaConf.merge(cfg.generation, {"max_new_tokens": new, "stop": []})  # stop strings would end runs early
    kwargs = gen.generation_kwargs(g, model, tok, chat=False, engine=engine)
    kwargs["min_new_tokens"] = new  # every run generates exactly `new` tokens (EOS suppressed), as timed
    ids = token_ids(tok, prompt, batch)

    def once() -> tuple[float, float | None, int]:
        torch.manual_seed(cfg.seed)
        streamer = TimingStreamer()
        outputs, seconds = gen.generate_batch(model, tok, ids, device=device, kwargs=kwargs, stop=[],
                                              streamer=streamer, engine=engine)
        return seconds, streamer.ttft, min(o.new_tokens for o in outputs)

    warmup = None
    if cfg.task.warmup:
        start = time.perf_counter()
        once()
        warmup = time.perf_counter() - start
    reset_peak_memory()
    runs = [once() for _ in range(int(cfg.task.repeats))]
    from gemma_run.bench import gpu_state

    state = gpu_state.query() if device.type == "cuda" else None  # clocks just after the timed runs
    seconds = statistics.median(r[0] for r in runs)
    ttft = statistics.median(r[1] for r in runs if r[1] is not None) if any(r[1] for r in runs) else None
    made = min(r[2] for r in runs)
    if made != new:
        raise GemmaRunError(f"bench generated {made} tokens instead of {new} (prompt {prompt}, batch {batch})",
                            key="task.new_tokens", fix="report this: min_new_tokens should prevent an early stop")
    decode_s = seconds - ttft if ttft is not None else None
    decode_tps = (new - 1) / decode_s if decode_s and new > 1 else None
    from gemma_run.infer.engine import fused_projections
    from gemma_run.infer.engine.session import static_length

    static_len = static_length(prompt + new, loaded.context_length) if engine.name == "fast" else 0
    step = limit.decode_step_bytes(cfg, loaded.dtype, prompt, new, batch, static_len,
                                   stacked=fused_projections.count(model) > 0)
    row: dict[str, Any] = {
        "prompt_tokens": prompt, "new_tokens": new, "batch": batch, "repeats": len(runs),
        "warmup_seconds": round(warmup, 3) if warmup is not None else None,
        "seconds": round(seconds, 4), "time_to_first_token_s": round(ttft, 4) if ttft is not None else None,
        "prefill_tokens_per_second": round(batch * prompt / ttft, 2) if ttft else None,
        "decode_tokens_per_second": round(decode_tps, 3) if decode_tps else None,  # per sequence = steps/s
        "decode_throughput": round(decode_tps * batch, 3) if decode_tps else None,  # all sequences
        "total_tokens_per_second": round(batch * new / seconds, 3),
        **step,
        "limit_tokens_per_second": round(bandwidth / step["bytes_per_step"], 3),
        "limit_fraction": round(limit.limit_fraction(decode_tps, step["bytes_per_step"], bandwidth), 6)
        if decode_tps else None,
        "peak_memory_bytes": peak_memory(),
        "gpu_state": state,
    }
    log.info("bench prompt=%d new=%d batch=%d: ttft %.3f s, decode %.1f tok/s (%.1f%% of the limit)", prompt, new,
             batch, ttft or float("nan"), decode_tps or float("nan"), 100 * (row["limit_fraction"] or float("nan")))
    if state is not None:
        log.info("GPU after the timed runs: %s", gpu_state.describe(state))
    return row


def _environment() -> dict[str, Any]:
    import os
    import platform

    import torch

    from gemma_run.doctor.versions import installed

    env: dict[str, Any] = {d: installed(d) for d in ("python", "torch", "transformers", "accelerate", "torchao",
                                                     "bitsandbytes")}
    env.update(platform=platform.platform(), cpu_count=os.cpu_count(), cuda=torch.version.cuda,
               gpus=[torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
               torch_threads=torch.get_num_threads())
    return env
