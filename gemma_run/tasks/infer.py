"""task=infer: generate from a prompt through the one loading path; results into the run dir."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from gemma_run.errors import ConfigError, GemmaRunError

log = logging.getLogger(__name__)


def validate(cfg: DictConfig) -> list[GemmaRunError]:
    problems: list[GemmaRunError] = []
    if cfg.prompt is not None and not str(cfg.prompt).strip():
        problems.append(ConfigError("prompt is empty", key="prompt", fix='prompt="Write a haiku about GPUs"'))
    return problems


def _text(tokenizer: Any, prompt: str, cfg: DictConfig) -> str:
    if not cfg.chat:
        return prompt
    messages = ([{"role": "system", "content": cfg.system_prompt}] if cfg.system_prompt else [])
    messages.append({"role": "user", "content": prompt})
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def run(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    import torch

    from gemma_run.loading import load

    torch.manual_seed(cfg.seed)
    loaded = load(cfg)
    tok, model = loaded.tokenizer, loaded.model
    prompt = cfg.prompt if cfg.prompt is not None else "Hello"
    text = _text(tok, prompt, cfg)
    inputs = tok(text, return_tensors="pt", add_special_tokens=not cfg.chat).to(loaded.input_device)
    g = cfg.generation
    start = time.perf_counter()
    out = model.generate(
        **inputs, max_new_tokens=g.max_new_tokens, do_sample=g.do_sample, temperature=g.temperature,
        top_p=g.top_p, top_k=g.top_k, repetition_penalty=g.repetition_penalty, pad_token_id=tok.pad_token_id,
    )
    seconds = time.perf_counter() - start
    new_tokens = out[0, inputs["input_ids"].shape[1]:]
    completion = tok.decode(new_tokens, skip_special_tokens=True)
    print(completion)
    record = {"index": 0, "prompt": prompt, "completion": completion, "new_tokens": int(new_tokens.numel())}
    with open(run_dir / "generations.jsonl", "a") as f:
        f.write(json.dumps(record) + "\n")
    return {
        "checkpoint": str(loaded.path),
        "dtype": loaded.dtype,
        "load_seconds": loaded.load_seconds,
        "bytes_per_device": loaded.bytes_per_device,
        "new_tokens": int(new_tokens.numel()),
        "tokens_per_second": round(new_tokens.numel() / seconds, 2) if seconds > 0 else None,
    }
