"""Where a model's files are: a local dir, the local HF cache (offline), or a random-weight build."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from gemma_run.errors import GemmaRunError

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")


def resolve(model_cfg: Any, cache_dir: str | Path) -> Path:
    """The directory holding config.json, the weights and the tokenizer of ``model_cfg``."""
    if model_cfg.weights.name == "random":
        from gemma_run.loading.random_weights import ensure_random_checkpoint

        return ensure_random_checkpoint(model_cfg, cache_dir)
    if model_cfg.path:
        path = Path(model_cfg.path).expanduser()
        if not path.is_dir():
            raise GemmaRunError(f"model.path {path} does not exist", key="model.path",
                                fix="point model.path at a directory with config.json and *.safetensors, "
                                    "or use model.weights=random to build the architecture locally")
        check_weights(path, model_cfg.allow_pickle)
        return path
    return _from_hf_cache(model_cfg)


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
    if any(path.glob("*.safetensors")):
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
