"""Batches grouped by length, the context-length check, and generate() on one batch with the config's parameters
(through the engine the run chose: gemma_run.infer.engine.options)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from gemma_run.app.errors import GemmaRunError
from gemma_run.infer.engine.options import HF, EngineOptions
from gemma_run.infer.prompts import PromptItem
from gemma_run.infer.stats import TimingStreamer


@dataclass
class Output:
    completion: str
    new_tokens: int
    prompt_tokens: int
    stopped_by: str  # "eos" | "stop_string" | "max_new_tokens"


def plan_batches(lengths: list[int], batch_size: int) -> list[list[int]]:
    """Positions grouped into batches of similar length (little padding), longest first, so a batch that
    does not fit in memory fails at the start, not after an hour. With batch_size=1, input order."""
    order = list(range(len(lengths)))
    if batch_size > 1:
        order.sort(key=lambda i: -lengths[i])
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


def check_context(items: list[PromptItem], lengths: list[int], context: int | None, max_new_tokens: int) -> None:
    """Refuse (before generating anything) prompts that do not fit the model's context with max_new_tokens.

    Truncating silently would answer a different question; the user decides what to cut.
    """
    if context is None:
        return
    room = context - max_new_tokens
    over = [(item, n) for item, n in zip(items, lengths, strict=True) if n > room]
    if not over:
        return
    shown = "; ".join(f"{item.source}: {n} tokens" for item, n in over[:5])
    more = f" (and {len(over) - 5} more)" if len(over) > 5 else ""
    longest = max(n for _, n in over)
    fix = "shorten these prompts"
    if longest < context:
        fix += f", or lower generation.max_new_tokens to {context - longest} or less"
    raise GemmaRunError(
        f"{len(over)} prompt(s) too long for the model's context of {context} tokens with "
        f"generation.max_new_tokens={max_new_tokens} (room for {max(room, 0)} prompt tokens): {shown}{more}",
        key=over[0][0].source if over[0][0].source != "prompt" else "prompt",
        fix=fix + ", or use a model with a longer context")


def eos_ids(model: Any, tokenizer: Any, chat: bool) -> list[int]:
    """The ids that end a completion: the model's eos, plus <end_of_turn> for chats (Gemma ends turns so)."""
    ids = getattr(model.generation_config, "eos_token_id", None)
    if ids is None:
        ids = tokenizer.eos_token_id
    ids = [ids] if isinstance(ids, int) else list(ids or [])
    if chat:
        end_turn = tokenizer.convert_tokens_to_ids("<end_of_turn>")
        if isinstance(end_turn, int) and end_turn != tokenizer.unk_token_id and end_turn not in ids:
            ids.append(end_turn)
    return ids


def generation_kwargs(g: Any, model: Any, tokenizer: Any, chat: bool,
                      engine: EngineOptions | None = None) -> dict[str, Any]:
    """generate()'s arguments from the ``generation`` group (the fast engine reads the same); sampling knobs only
    when sampling; the cache and compile keys only for generate() (``engine`` None: generate())."""
    kwargs: dict[str, Any] = {
        "max_new_tokens": int(g.max_new_tokens),
        "do_sample": bool(g.do_sample),
        "repetition_penalty": float(g.repetition_penalty),
        "pad_token_id": tokenizer.pad_token_id,
        "eos_token_id": eos_ids(model, tokenizer, chat),
    }
    if g.do_sample:
        kwargs.update(temperature=float(g.temperature), top_p=float(g.top_p), top_k=int(g.top_k))
    else:  # greedy: clear the checkpoint's sampling defaults so generate() does not warn about them
        kwargs.update(temperature=None, top_p=None, top_k=None)
    if g.stop:
        kwargs.update(stop_strings=list(g.stop), tokenizer=tokenizer)
    if engine is None or engine.name == "hf":
        kwargs.update(cache_kwargs(g))
    return kwargs


def cache_kwargs(g: Any) -> dict[str, Any]:
    """The KV cache and compile keys of generate(): ``generation.cache_implementation`` and ``generation.compile``.

    transformers compiles the forward by itself whenever the cache is compilable (static) and the model is on
    a GPU; ``disable_compile`` keeps a static cache eager unless ``compile=true`` asks for it, which passes a
    ``CompileConfig`` (inductor, reduce-overhead: the decode step replayed as a CUDA graph).
    """
    cache = getattr(g.cache_implementation, "value", g.cache_implementation)
    if g.compile and cache != "static":
        raise GemmaRunError("generation.compile=true needs a static KV cache (compiled steps need fixed shapes)",
                            key="generation.compile", fix="add generation.cache_implementation=static")
    out: dict[str, Any] = {}
    if cache is not None:
        out["cache_implementation"] = str(cache)
    if g.compile:
        from transformers import CompileConfig

        out["compile_config"] = CompileConfig()
    elif cache is not None:
        out["disable_compile"] = True
    return out


def encode(tokenizer: Any, text: str, add_special_tokens: bool) -> list[int]:
    return tokenizer(text, add_special_tokens=add_special_tokens)["input_ids"]


def generate_batch(model: Any, tokenizer: Any, ids: list[list[int]], *, device: Any, kwargs: dict[str, Any],
                   stop: list[str], streamer: TimingStreamer, engine: EngineOptions = HF) -> tuple[list[Output], float]:
    """Generate for a batch of token id lists (left-padded); returns the outputs and the seconds it took."""
    inputs = tokenizer.pad({"input_ids": ids}, padding=True, return_tensors="pt").to(device)
    return _generate(model, tokenizer, dict(inputs), kwargs, stop, streamer, engine)


def generate_image(model: Any, processor: Any, text: str, image_path: str, *, device: Any, kwargs: dict[str, Any],
                   stop: list[str], streamer: TimingStreamer) -> tuple[list[Output], float]:
    """Generate for one image+text prompt (``text`` already rendered with the image placeholder)."""
    from PIL import Image

    with Image.open(image_path) as img:
        inputs = processor(text=text, images=img.convert("RGB"), return_tensors="pt")
    dtype = next(model.parameters()).dtype
    moved = {k: (v.to(device, dtype=dtype) if k == "pixel_values" and dtype.is_floating_point else v.to(device))
             for k, v in inputs.items()}
    return _generate(model, processor.tokenizer, moved, kwargs, stop, streamer)


def _generate(model: Any, tokenizer: Any, inputs: dict[str, Any], kwargs: dict[str, Any], stop: list[str],
              streamer: TimingStreamer, engine: EngineOptions = HF) -> tuple[list[Output], float]:
    import torch

    start = time.perf_counter()
    streamer.start = start
    with torch.inference_mode():
        if engine.name == "fast":
            from gemma_run.infer.engine.loop import generate

            out = generate(model, inputs["input_ids"], inputs["attention_mask"], kwargs, engine, streamer=streamer,
                           stop=stop, tokenizer=tokenizer)
        else:
            out = model.generate(**inputs, streamer=streamer, **kwargs)
    seconds = time.perf_counter() - start
    width = inputs["input_ids"].shape[1]
    eos = set(kwargs["eos_token_id"])
    outputs = []
    for row in range(out.shape[0]):
        new = out[row, width:].tolist()
        count, stopped_by = len(new), "max_new_tokens"
        for pos, token in enumerate(new):
            if token in eos:
                count, stopped_by = pos + 1, "eos"
                break
        else:  # a row stopped by a stop string is padded after it
            while count and new[count - 1] == kwargs["pad_token_id"]:
                count -= 1
        text = tokenizer.decode(new[:count], skip_special_tokens=True)
        cut = min((text.index(s) for s in stop if s in text), default=None)
        if cut is not None:  # the completion ends before the stop string
            text, stopped_by = text[:cut], "stop_string"
        prompt_tokens = int(inputs["attention_mask"][row].sum())
        outputs.append(Output(text, count, prompt_tokens, stopped_by))
    return outputs, seconds
