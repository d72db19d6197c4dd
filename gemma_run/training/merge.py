"""A trained LoRA adapter merged into its base model, saved as a plain safetensors checkpoint.

The base is loaded unquantized (in the model's dtype) even after QLoRA: merging into 4-bit weights would round
the merged weights back to 4 bits (max logit difference ~0.8 on a tiny model), and a merged 4-bit checkpoint
could not be re-quantized differently later. The result loads like any checkpoint:
``gemma-run task=infer model=<base> model.path=<merged dir>``.
"""

from __future__ import annotations

import copy
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from gemma_run import quant
from gemma_run.app.errors import GemmaRunError

log = logging.getLogger(__name__)


def adapter_dir(path_str: str, key: str) -> Path:
    """An adapter dir itself, or a training run/output dir holding adapter/."""
    path = Path(path_str).expanduser()
    for candidate in (path, path / "adapter"):
        if (candidate / "adapter_config.json").is_file():
            return candidate
    raise GemmaRunError(f"{key}: no LoRA adapter in {path} (no adapter_config.json there or in adapter/)", key=key,
                        fix="point it at a finished task=train run dir, its adapter/ or a checkpoint-N dir")


def _unquantized(cfg: DictConfig) -> DictConfig:
    from gemma_run.schema.quant import QuantConfig

    out = copy.deepcopy(cfg)
    out.quant = QuantConfig()  # the schema's default: no quantization
    return out


def infer_command(cfg: DictConfig, merged: Path) -> str:
    """The command that runs the merged weights: the base's model group (its settings; the merged config.json is
    the architecture either way), or none when the base itself was a model.path."""
    if cfg.model.path:
        return f"gemma-run task=infer model.path={merged}"
    from gemma_run.app.validation import option_file

    group = option_file("model")[0] or cfg.model.name
    weights = " model.weights=pretrained" if cfg.model.weights.name == "random" else ""
    return f"gemma-run task=infer model={group} model.path={merged}{weights}"


def merge(cfg: DictConfig, adapter: Path, out: Path, *, replace: bool = False) -> dict[str, Any]:
    """Write base + adapter into ``out`` (atomically: a crash leaves no half-written model there).

    ``replace``: a training run's own merged/ is rewritten (its adapter changed on resume); otherwise an
    existing non-empty ``out`` is refused, never overwritten.
    """
    from peft import PeftModel

    from gemma_run.loading import load

    if not replace and out.exists() and any(out.iterdir()):
        raise GemmaRunError(f"{out} already exists and is not empty", key="task.output_dir",
                            fix="choose another output dir or remove that one")
    base_cfg = _unquantized(cfg) if quant.from_cfg(cfg.quant).quantized else cfg
    if base_cfg is not cfg:
        log.info("merge: loading the base unquantized (quant=%s was for training only)", cfg.quant.name)
    loaded = load(base_cfg, device_map=None)
    model = PeftModel.from_pretrained(loaded.model, str(adapter))
    merged = model.merge_and_unload()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        merged.save_pretrained(tmp, safe_serialization=True)
        loaded.tokenizer.padding_side = "left"  # as loaded for generation
        loaded.tokenizer.save_pretrained(tmp)
        if out.exists():  # empty, or ours to replace: moved aside first so a crash never leaves neither
            old = out.with_name(f".{out.name}-old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(out, old)
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    command = infer_command(cfg, out)
    log.info("merge: wrote %s; run it with: %s", out, command)
    return {"merged": str(out), "adapter": str(adapter), "base_model": str(loaded.path), "infer_command": command}
