"""task=infer: generate for one prompt or a file of them, through the one loading path.

Results go to ``generations.jsonl`` as each batch finishes (see gemma_run/infer/store.py), so an interrupted
run restarted with ``resume=<run dir>`` (or ``resume=auto``) answers every prompt exactly once.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from gemma_run.app.errors import ConfigError, GemmaRunError
from gemma_run.infer.prompts import PromptItem, collect, read_prompts

log = logging.getLogger(__name__)


def validate(cfg: DictConfig) -> list[GemmaRunError]:
    """Problems found without loading anything: the prompts (every bad line of a file), the chat keys."""
    items, problems = collect(cfg)
    if cfg.system_prompt is not None and not str(cfg.system_prompt).strip():
        problems.append(ConfigError("system_prompt is empty", key="system_prompt",
                                    fix="give it some text, or leave it unset"))
    if cfg.system_prompt and not cfg.chat and not any(i.messages for i in items):
        problems.append(ConfigError("system_prompt is only used in chats", key="system_prompt",
                                    fix="chat=true (the system prompt is folded into the first user turn)"))
    with_image = [i for i in items if i.image is not None]
    if with_image and cfg.model.text_only:
        problems.append(ConfigError(f"{with_image[0].source} has an image, but model.text_only=true loads only the "
                                    "language model", key=with_image[0].source,
                                    fix="model.text_only=false (needs a multimodal checkpoint with its processor)"))
    return problems


def run(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    from gemma_run.distributed import parallel

    if parallel.is_tp(cfg):
        return _launch(cfg, run_dir)
    return run_here(cfg, run_dir)


def _launch(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    """device_map=tp: the same run on every rank of launcher=torchrun (gemma_run.distributed.worker -> run_rank);
    rank 0's result comes back. A random model is built here first, once, not by every rank at the same time."""
    import torch

    from gemma_run.distributed.launch import launch, write_config
    from gemma_run.loading import checkpoint

    read_prompts(cfg)  # a bad prompt file fails here, not in every rank
    checkpoint.resolve(cfg.model, cfg.cache_dir)
    if torch.cuda.is_initialized():  # a random model built on GPU 0 leaves its blocks cached: give them to rank 0
        torch.cuda.empty_cache()
    write_config(cfg, run_dir)
    return launch(cfg, run_dir, None, "inference")


def run_rank(cfg: DictConfig, run_dir: Path, resume_from: Path | None = None, main: bool = True) -> dict[str, Any]:
    """One rank of device_map=tp (gemma_run.distributed.worker): every rank generates, rank 0 (``main``) writes."""
    return run_here(cfg, run_dir, main=main)


def run_here(cfg: DictConfig, run_dir: Path, main: bool = True) -> dict[str, Any]:
    """The run in this process. Under device_map=tp every rank runs it (each forward needs all ranks); only the
    ``main`` one (rank 0) writes generations and prints."""
    from gemma_run.infer.store import GenerationsFile

    items = read_prompts(cfg)
    store = GenerationsFile(run_dir)
    store.load()
    store.check_matches(items)
    todo = [item for item in items if item.index not in store.done]
    result: dict[str, Any] = {"prompts": len(items), "skipped": len(items) - len(todo), "generated": 0,
                              "generations": str(store.path)}
    if store.done:
        log.info("resume: %d of %d prompts already in %s; generating the other %d",
                 len(store.done), len(items), store.path, len(todo))
    if not todo:
        if main:
            store.finalize()
        return result
    result.update(_generate(cfg, todo, store, single=len(items) == 1, main=main))
    if main:
        store.finalize()
    return result


def _generate(cfg: DictConfig, todo: list[PromptItem], store: Any, single: bool, main: bool = True) -> dict[str, Any]:
    import torch
    from tqdm import tqdm

    from gemma_run.distributed import parallel
    from gemma_run.infer import generate as gen
    from gemma_run.infer.engine.options import choose_engine
    from gemma_run.infer.render import render, render_image_chat
    from gemma_run.infer.stats import TimingStreamer, Totals, peak_memory, reset_peak_memory
    from gemma_run.loading import load

    reset_peak_memory()
    loaded = load(cfg)
    model, tok = loaded.model, loaded.tokenizer
    tok.padding_side = "left"  # decoder-only batches: pad on the left so every row continues its own text
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    images = [k for k, item in enumerate(todo) if item.image is not None]
    if images and loaded.processor is None:
        raise GemmaRunError(f"{todo[images[0]].source} has an image, but {loaded.path} ships no image processor "
                            "(processor_config.json / preprocessor_config.json)", key=todo[images[0]].source,
                            fix="use the multimodal checkpoint with its processor files, or drop the `image` field")
    texts = [k for k, item in enumerate(todo) if item.image is None]
    is_chat = [cfg.chat or item.messages is not None for item in todo]
    ids = {k: gen.encode(tok, render(todo[k], tok, cfg.chat, cfg.system_prompt), add_special_tokens=not is_chat[k])
           for k in texts}
    lengths = [len(ids[k]) for k in texts]
    gen.check_context([todo[k] for k in texts], lengths, loaded.context_length, cfg.generation.max_new_tokens)
    # text prompts in length-grouped batches, then each image prompt alone (images differ in soft-token layout)
    batches = [[texts[i] for i in b] for b in gen.plan_batches(lengths, cfg.batch_size)] + [[k] for k in images]
    engine = choose_engine(cfg.generation, model, images=bool(images),  # device_map=tp: generate()
                               tokens=len(todo) * int(cfg.generation.max_new_tokens))
    log.info("generation engine: %s", engine.describe())
    kwargs = gen.generation_kwargs(cfg.generation, model, tok, chat=any(is_chat) or bool(images), engine=engine)
    stream = single and cfg.generation.stream and main
    totals = Totals()
    device = loaded.input_device
    bar = tqdm(total=len(todo), desc="prompts", unit="prompt", file=sys.stderr, disable=single or not main)
    for batch in batches:
        if cfg.generation.do_sample:  # a prompt's sample depends on the seed and its place, not on resume
            torch.manual_seed(cfg.seed + min(todo[i].index for i in batch))
        streamer = TimingStreamer(_console_streamer(tok) if stream else None)
        first = todo[batch[0]]
        if first.image is not None:
            text = render_image_chat(first, loaded.processor, cfg.system_prompt)
            outputs, seconds = gen.generate_image(model, loaded.processor, text, str(first.image_path), device=device,
                                                  kwargs=kwargs, stop=list(cfg.generation.stop), streamer=streamer)
        else:
            outputs, seconds = gen.generate_batch(model, tok, [ids[i] for i in batch], device=device, kwargs=kwargs,
                                                  stop=list(cfg.generation.stop), streamer=streamer, engine=engine)
        records = []
        for i, out in zip(batch, outputs, strict=True):
            records.append({**todo[i].record(), "completion": out.completion, "new_tokens": out.new_tokens,
                            "prompt_tokens": out.prompt_tokens, "stopped_by": out.stopped_by,
                            "seconds": round(seconds, 4)})
            totals.add(out.new_tokens, out.prompt_tokens, 0.0, None)
        totals.add(0, 0, seconds, streamer.ttft)
        if main:
            store.append(records)
        bar.update(len(batch))
        if single and not stream and main:
            print(outputs[0].completion, flush=True)
    bar.close()
    summary = {
        "checkpoint": str(loaded.path), "load_kind": loaded.kind, "dtype": loaded.dtype,
        "load_seconds": loaded.load_seconds, "bytes_per_device": loaded.bytes_per_device,
        "input_device": str(device), "generated": len(todo), "batch_size": cfg.batch_size,
        "engine": engine.name, "compiled": engine.compile, "cuda_graph": engine.graph,
        "engine_reason": engine.reason, **_steps(engine, model),
        **totals.summary(), "peak_memory_bytes": peak_memory(),
    }
    if parallel.is_tp(cfg):  # collective: every rank reports its slice
        summary.update(tensor_parallel=parallel.world_size(cfg),
                       bytes_per_rank=parallel.bytes_per_rank(loaded.bytes_per_device))
    log.info("generated %d prompt(s): %s new tokens, %s tok/s, time to first token %s s",
             len(todo), summary["new_tokens"], summary["tokens_per_second"], summary["time_to_first_token_s"])
    return summary


def _console_streamer(tokenizer: Any):  # -> transformers.TextStreamer
    from transformers import TextStreamer

    return TextStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)


def _steps(engine: Any, model: Any) -> dict[str, Any]:
    """What the fast engine's steps really ran as (compile or recording can fall back, with a warning)."""
    if engine.name != "fast":
        return {}
    from gemma_run.infer.engine import Decoder, fused_projections, packed_4bit

    return {"engine_sessions": Decoder.of(model).report(), "fused_projections": fused_projections.count(model),
            "kernel_4bit": engine.kernel_4bit, "packed_4bit_linears": packed_4bit.count(model)}
