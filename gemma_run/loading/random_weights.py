"""Random-weight checkpoints of real architectures, built locally and cached as safetensors.

`model.weights=random` builds the architecture in `model.config` with seeded random weights and a locally
trained tokenizer, saves both into ``<cache_dir>/random/<name>-<hash>/`` and from then on every task loads
that directory through the ordinary loading path (the same ``from_pretrained`` as real weights).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from gemma_run.loading import compat

log = logging.getLogger(__name__)

COMPLETE = ".complete"  # written last: a half-built dir is never taken for a checkpoint


def architecture_config(config: dict[str, Any], text_only: bool):  # -> transformers.PretrainedConfig
    """The transformers config of an architecture (the text model's only, for a text-only multimodal run)."""
    from transformers import AutoConfig

    params = dict(config)
    model_type = params.pop("model_type")
    cfg = AutoConfig.for_model(model_type, **params)
    if text_only and hasattr(cfg, "text_config") and cfg.text_config is not None:
        text = cfg.text_config
        for name in ("bos_token_id", "eos_token_id", "pad_token_id"):
            if getattr(text, name, None) is None and getattr(cfg, name, None) is not None:
                setattr(text, name, getattr(cfg, name))
        return text
    return cfg


BIG = 500_000_000  # parameters above which a random model is built in bf16 (on a GPU when there is one)


def build_device_dtype(arch: Any) -> tuple[str, Any]:
    """Where and in which dtype to build: small models in fp32 on the CPU (exact, reproducible everywhere);
    big ones in bf16 (as published checkpoints are) on the GPU when there is one: a random 4B builds there in
    seconds instead of minutes of CPU init and 16 GB of fp32 files. The GPU's random stream differs from the
    CPU's, so such a cache entry is reproducible on the machine (kind) that built it."""
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        n = sum(p.numel() for p in AutoModelForCausalLM.from_config(arch).parameters())
    if n <= BIG:
        return "cpu", torch.float32
    return ("cuda" if torch.cuda.is_available() else "cpu"), torch.bfloat16


def checkpoint_dir(cache_dir: str | Path, name: str, config: dict[str, Any], seed: int, vocab: int,
                   text_only: bool, template: str = "gemma3") -> Path:
    fields = {"config": config, "seed": seed, "tokenizer_vocab": vocab, "text_only": text_only}
    if template != "gemma3":  # the default stays out of the key: the dirs built before the key existed stay valid
        fields["chat_template"] = template
    key = json.dumps(fields, sort_keys=True)
    digest = hashlib.sha256(key.encode()).hexdigest()[:12]
    return Path(cache_dir).expanduser() / "random" / f"{name}-{digest}"


MEMORY_ABOVE = 20e9  # bytes of checkpoint above which random_storage=auto builds in memory (12B: 24 GB, 27B: 54 GB)
IN_MEMORY = ".in-memory"  # marker of a dir holding only config + tokenizer: the weights are built at load time


def in_memory(path: Path) -> bool:
    """Whether ``path`` is a random model whose weights are built in memory at every load."""
    return (path / IN_MEMORY).is_file()


def checkpoint_bytes(arch: Any) -> int:
    """Bytes the disk checkpoint of ``arch`` would take (in the dtype build_device_dtype picks)."""
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        n = sum(p.numel() for p in AutoModelForCausalLM.from_config(arch).parameters())
    return n * (4 if n <= BIG else 2)


def storage(model_cfg: Any, arch: Any, disk_dir: Path) -> str:
    """disk | memory for this run. auto: a checkpoint already built stays in use; else memory when the
    checkpoint would exceed MEMORY_ABOVE or 90% of the free disk of the cache dir."""
    choice = model_cfg.random_storage.name
    if choice != "auto":
        return choice
    if (disk_dir / COMPLETE).is_file():
        return "disk"
    need = checkpoint_bytes(arch)
    free = shutil.disk_usage(_existing_parent(disk_dir)).free
    if need > MEMORY_ABOVE or need > 0.9 * free:
        log.info("random %s: the checkpoint would take %.1f GB (%.1f GB free in %s): building it in memory "
                 "(model.random_storage=disk forces a checkpoint)", model_cfg.name, need / 1e9, free / 1e9,
                 disk_dir.parent)
        return "memory"
    return "disk"


def builds_in_memory(model_cfg: Any, cache_dir: str | Path) -> bool:
    """Whether loading ``model_cfg`` builds its random weights in memory (as :func:`ensure_random_checkpoint`
    decides), found without building anything: the planner adds that build's transient."""

    from gemma_run.loading.checkpoint import uses_random

    if not uses_random(model_cfg):
        return False
    config, target = _config_and_dir(model_cfg, cache_dir)
    if (target / COMPLETE).is_file() and model_cfg.random_storage.name != "memory":
        return False
    return storage(model_cfg, architecture_config(config, model_cfg.text_only), target) == "memory"


def _config_and_dir(model_cfg: Any, cache_dir: str | Path) -> tuple[dict[str, Any], Path]:
    """The model group's architecture as a plain dict, and the cache dir of its random checkpoint."""
    from omegaconf import OmegaConf

    config = OmegaConf.to_container(model_cfg.config, resolve=True) if OmegaConf.is_config(model_cfg.config) \
        else dict(model_cfg.config)
    return config, checkpoint_dir(cache_dir, model_cfg.name, config, model_cfg.seed, model_cfg.tokenizer_vocab_size,
                                  model_cfg.text_only, _template(model_cfg))


def _template(model_cfg: Any) -> str:
    return str(getattr(model_cfg, "chat_template", None) or "gemma3")


def _existing_parent(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def ensure_random_checkpoint(model_cfg: Any, cache_dir: str | Path) -> Path:
    """The cached checkpoint of this random-weight model, built first if it is not there yet.

    With in-memory storage (see :func:`storage`) the directory holds the config, generation config and
    tokenizer only (marked by IN_MEMORY); :func:`gemma_run.loading.load` builds the weights itself.
    """
    config, target = _config_and_dir(model_cfg, cache_dir)
    if (target / COMPLETE).is_file() and model_cfg.random_storage.name != "memory":
        return target
    arch = architecture_config(config, model_cfg.text_only)
    if storage(model_cfg, arch, target) == "memory":
        target = target.with_name(target.name + "-memory")
        if not (target / COMPLETE).is_file():
            _build_dir(model_cfg, arch, target, weights=False)
        return target
    _build_dir(model_cfg, arch, target, weights=True)
    return target


def _build_dir(model_cfg: Any, arch: Any, target: Path, weights: bool) -> None:
    """Write the random model's dir: tokenizer (+ processor), config, and the weights when ``weights``."""
    import torch
    from transformers import AutoModelForCausalLM

    from gemma_run.loading.tokenizer_build import build_tokenizer, chat_format

    log.info("building random-weight %s into %s (first use; cached afterwards%s)", model_cfg.name, target,
             "" if weights else "; config and tokenizer only, the weights are built in memory at every load")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        device, dtype = build_device_dtype(arch)
        torch.manual_seed(model_cfg.seed)
        with torch.device(device if weights else "meta"):
            model = AutoModelForCausalLM.from_config(arch, **{compat.dtype_kwarg(): dtype})  # 4.53: torch_dtype
        vocab = min(model_cfg.tokenizer_vocab_size, model.get_input_embeddings().num_embeddings)
        text_arch = getattr(arch, "text_config", None) or arch
        max_len = getattr(text_arch, "max_position_embeddings", None) or getattr(arch, "n_positions", 8192)
        template = _template(model_cfg)
        tokenizer = build_tokenizer(vocab, tmp, model_max_length=max_len, template=template)
        for name in ("bos_token_id", "eos_token_id", "pad_token_id"):  # the ids this tokenizer produces
            setattr(model.config, name, getattr(tokenizer, name))
            setattr(model.generation_config, name, getattr(tokenizer, name))
        end_of_turn = chat_format(template).end_of_turn
        if end_of_turn:  # a reply ends with its turn's end, as the published generation config says
            model.generation_config.eos_token_id = [tokenizer.eos_token_id,
                                                    tokenizer.convert_tokens_to_ids(end_of_turn)]
        if getattr(arch, "model_type", "") == "gemma3" and getattr(arch, "vision_config", None) is not None:
            from gemma_run.loading.tokenizer_build import build_gemma3_processor

            for name, value in build_gemma3_processor(tmp, arch).items():  # image token ids of this tokenizer
                setattr(model.config, name, value)
        if weights:
            model.save_pretrained(tmp, safe_serialization=True)
        else:
            model.config.save_pretrained(tmp)
            model.generation_config.save_pretrained(tmp)
            (tmp / IN_MEMORY).write_text(json.dumps({"seed": model_cfg.seed}))
        (tmp / COMPLETE).write_text(json.dumps({"name": model_cfg.name, "seed": model_cfg.seed}))
        if target.exists():  # another process won the race; keep its copy
            shutil.rmtree(tmp)
        else:
            try:
                os.replace(tmp, target)
            except OSError:  # another process put its copy there after the check above; keep that one
                if not (target / COMPLETE).is_file():
                    raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
