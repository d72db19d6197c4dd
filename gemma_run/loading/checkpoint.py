"""Where a model's files are: a local dir, the local HF cache (offline), or a random-weight build.

The rule for ``model.path``: a given path is always the weights that run, and its config.json is the model's
architecture everywhere (the plan, the preflight, the log, result.json); ``model.weights=random`` with a path is
refused. ``model.weights=auto`` (the tiny default) means random weights only when no path or hub id is given.
"""

from __future__ import annotations

import json
import logging
import struct
from pathlib import Path
from typing import Any

from gemma_run.app.errors import GemmaRunError, raise_all

log = logging.getLogger(__name__)

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")


def uses_random(model_cfg: Any) -> bool:
    """Whether this model is built with random weights (weights=random, or auto with no checkpoint named)."""
    kind = model_cfg.weights.name
    return kind == "random" or (kind == "auto" and not model_cfg.path and not model_cfg.hub_id)


def local_path(model_cfg: Any) -> Path | None:
    """The checkpoint dir the run loads when ``model.path`` is given (never with random weights)."""
    if not model_cfg.path or uses_random(model_cfg):
        return None
    return Path(model_cfg.path).expanduser()


def path_problems(model_cfg: Any) -> list[GemmaRunError]:
    """What is wrong with ``model.path`` itself, found without reading any weight."""
    if not model_cfg.path:
        return []
    path = Path(model_cfg.path).expanduser()
    if model_cfg.weights.name == "random":
        return [GemmaRunError(f"model.weights=random builds random weights, but model.path={model_cfg.path} names a "
                              "checkpoint: a given model.path is always the weights that run", key="model.weights",
                              fix=f"drop model.weights=random to run {path}, or drop model.path for random weights")]
    if not path.is_dir():
        what = "is not a directory" if path.exists() else "does not exist"
        return [GemmaRunError(f"model.path {path} {what}", key="model.path",
                              fix="point model.path at a directory with config.json and *.safetensors, "
                                  "or drop model.path and use model.weights=random to build the architecture locally")]
    if not (path / "config.json").is_file():
        return [GemmaRunError(f"{path} has no config.json", key="model.path",
                              fix="point model.path at a Hugging Face checkpoint directory (config.json + "
                                  "*.safetensors, as save_pretrained writes it)")]
    return []


def resolve(model_cfg: Any, cache_dir: str | Path) -> Path:
    """The directory holding config.json, the weights and the tokenizer of ``model_cfg``."""
    raise_all(path_problems(model_cfg))
    if uses_random(model_cfg):
        from gemma_run.loading.random_weights import ensure_random_checkpoint

        return ensure_random_checkpoint(model_cfg, cache_dir)
    path = local_path(model_cfg)
    if path is not None:
        check_weights(path, model_cfg.allow_pickle)
        return path
    return _from_hf_cache(model_cfg)


def architecture(model_cfg: Any) -> dict[str, Any]:
    """The architecture the run uses: the checkpoint's config.json when model.path is loaded, else model.config."""
    path = local_path(model_cfg)
    if path is not None:
        raise_all(path_problems(model_cfg))
        from gemma_run.loading.architecture import read_config

        return read_config(path)
    return architecture_of_group(model_cfg)


# The keys that give a checkpoint its shape, compared between a model group's config and the checkpoint's.
SHAPE_KEYS = ("model_type", "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
              "num_attention_heads", "num_key_value_heads", "head_dim", "n_embd", "n_layer", "n_head", "n_inner")


def _shape(config: dict[str, Any]) -> dict[str, Any]:
    """The shape keys of the language model (a multimodal config's text_config; ``*_text`` types as their family)."""
    text = config.get("text_config") or config
    out = {k: text[k] for k in SHAPE_KEYS if k in text}
    model_type = str(text.get("model_type") or config.get("model_type") or "")
    if model_type:
        out["model_type"] = model_type.removesuffix("_text")
    return out


def config_differences(group: dict[str, Any], checkpoint: dict[str, Any]) -> dict[str, list[Any]]:
    """key -> [model group's value, checkpoint's value] for the shape keys both give and that differ."""
    a, b = _shape(group), _shape(checkpoint)
    return {k: [a[k], b[k]] for k in a if k in b and a[k] != b[k]}


def adopt(cfg: Any) -> dict[str, Any]:
    """Make a loaded ``model.path`` the model of the run: its config.json becomes ``model.config`` and its dir's
    name ``model.name``, so the plan, the preflight, the logs and result.json describe the weights that run.

    A model group that names real weights (weights=pretrained) and disagrees with the checkpoint is warned
    about, with the differing keys; the tiny default (weights=auto) is only the architecture of random weights.
    Returns what result.json records (model, and model_path / model_config_differs when a path is loaded).
    Idempotent: a config already adopted is left as it is.
    """
    m = cfg.model
    raise_all(path_problems(m))
    path = local_path(m)
    if path is None:
        return {"model": m.name}
    config = architecture(m)
    name = path.resolve().name or str(path)
    out: dict[str, Any] = {"model": name, "model_path": str(path.resolve())}
    group = architecture_of_group(m)
    differs = config_differences(group, config) if m.weights.name == "pretrained" and group != config else {}
    if differs:
        shown = ", ".join(f"{k} {v[1]} (model group: {v[0]})" for k, v in differs.items())
        log.warning("model.path %s is not the architecture of model group %s: its config.json has %s; the "
                    "checkpoint's config.json is used (choose the matching model=..., or leave model= out)",
                    path, m.name, shown)
        out["model_config_differs"] = differs
    m.config = config
    m.name = name
    return out


def architecture_of_group(model_cfg: Any) -> dict[str, Any]:
    """``model.config`` as a plain dict (the model group's architecture)."""
    from omegaconf import OmegaConf

    config = model_cfg.config
    return OmegaConf.to_container(config, resolve=True) if OmegaConf.is_config(config) else dict(config)


def _from_hf_cache(model_cfg: Any) -> Path:
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        found = Path(snapshot_download(model_cfg.hub_id, revision=model_cfg.revision, local_files_only=True))
    except (LocalEntryNotFoundError, OSError, ValueError) as e:
        raise GemmaRunError(
            f"the weights of {model_cfg.hub_id} are not in the local Hugging Face cache "
            f"(looked in {constants.HF_HUB_CACHE}; gemma-run never downloads at run time)",
            key="model.hub_id",
            fix=f"download them once with `hf download {model_cfg.hub_id}` (set HF_HOME to choose the cache), "
                "or set model.path=/dir/with/the/checkpoint, or model.weights=random for random weights",
        ) from e
    check_weights(found, model_cfg.allow_pickle)
    return found


def check_weights(path: Path, allow_pickle: bool) -> None:
    """Safetensors only, unless pickle was explicitly allowed."""
    if not (path / "config.json").is_file():
        raise GemmaRunError(f"{path} has no config.json", key="model.path",
                            fix="point model.path at a Hugging Face checkpoint directory")
    shards = sorted(path.glob("*.safetensors"))
    if shards:
        check_complete(path, shards)
        return
    pickles = sorted(p.name for p in path.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if not pickles:
        raise GemmaRunError(f"{path} has no weights (*.safetensors)", key="model.path",
                            fix="copy the checkpoint's *.safetensors files there")
    if not allow_pickle:
        raise GemmaRunError(
            f"{path} has only pickle weights ({', '.join(pickles[:3])}). Loading them runs torch.load, which "
            "can execute arbitrary code from the file (CVE-2025-32434; transformers refuses it on torch < 2.6)",
            key="model.allow_pickle",
            fix="convert the checkpoint to safetensors, or, if you trust its source, model.allow_pickle=true",
        )


INDEX = "model.safetensors.index.json"


def check_complete(path: Path, shards: list[Path]) -> None:
    """Every shard the index names is there, and every safetensors file holds all the bytes its header promises
    (a download or copy cut short fails here, naming the file, instead of deep inside the loader)."""
    fix = "download or copy the checkpoint again (`hf download ...` resumes), or save it again with save_pretrained"
    index = path / INDEX
    if index.is_file():
        try:
            named = set(json.loads(index.read_text()).get("weight_map", {}).values())
        except (OSError, json.JSONDecodeError, AttributeError) as e:
            raise GemmaRunError(f"{index} is not valid JSON ({e}): the checkpoint is incomplete", key=str(index),
                                fix=fix) from e
        missing = sorted(n for n in named if not (path / n).is_file())
        if missing:
            raise GemmaRunError(f"{path} is incomplete: {len(missing)} shard(s) named in {INDEX} are missing "
                                f"({', '.join(missing[:3])})", key=str(path / missing[0]), fix=fix)
    for shard in shards:
        problem = _safetensors_problem(shard)
        if problem:
            raise GemmaRunError(f"{shard} is {problem}", key=str(shard), fix=fix)


def _safetensors_problem(file: Path) -> str | None:
    """Why ``file`` is not a whole safetensors file (header length, JSON header, then the data it indexes)."""
    size = file.stat().st_size
    if size < 8:
        return f"incomplete: {size} bytes, not even the 8-byte header length"
    with file.open("rb") as f:
        (header_len,) = struct.unpack("<Q", f.read(8))
        if header_len > size - 8:
            return f"incomplete: its header alone should be {header_len:,} bytes, the file has {size - 8:,} after it"
        try:
            header = json.loads(f.read(header_len))
            ends = [int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"]
        except (UnicodeDecodeError, json.JSONDecodeError, AttributeError, KeyError, TypeError, ValueError) as e:
            return f"not a valid safetensors file (its header does not parse: {e})"
    expected = 8 + header_len + max(ends, default=0)
    if size < expected:
        return f"incomplete: {size:,} of the {expected:,} bytes its header describes ({100 * size / expected:.1f}%)"
    return None
