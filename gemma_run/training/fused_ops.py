"""``train.fused_ops``: Liger's Triton kernels for the body of a Gemma model (RoPE, RMSNorm, GeGLU).

Each Gemma decoder layer runs six RMSNorms (four around attention and MLP, plus the q/k norms of Gemma 3), each
an fp32 upcast and several elementwise kernels in torch, the rotary embedding (four elementwise ops and two
copies), and the MLP's tanh-GELU times the up projection. Liger fuses each into one kernel, forward and backward,
and saves less for backward. The model is patched in place through liger_kernel's own
``apply_liger_kernel_to_gemma3_text`` / ``_gemma3`` / ``_gemma2`` / ``_gemma4_text`` with ``model=`` (its
instance path; Gemma 4: RMSNorm and GeGLU, its own RoPE), with its cross-entropy switches off: the loss is
gemma_run/training/loss.py's (``train.loss_kernel``).

- ``auto``: liger on CUDA when liger_kernel imports and the model type is one Liger patches; else none, the
  reason logged and recorded in result.json (``fused_ops_why``).
- ``liger``: the same, but a run where it cannot (no CUDA, liger_kernel missing) stops with the fix.
- ``none``: the model's own torch ops.

Liger's rotary patch replaces ``apply_rotary_pos_emb`` in transformers' modeling module (the attention looks it up
there at every call), and it rebinds the module's RMSNorm/MLP class names; :meth:`Applied.restore` puts those
module globals back once training is done, so a later model in the same process starts unpatched.
GeGLU is Liger's tanh approximation: it is used only where the config's activation is ``gelu_pytorch_tanh``
(every Gemma 2/3/4 checkpoint).
"""

from __future__ import annotations

import importlib
import logging
from dataclasses import dataclass, field
from typing import Any

from gemma_run.app.errors import GemmaRunError

log = logging.getLogger(__name__)

KEY = "train.fused_ops"
# model_type -> (liger_kernel's function, transformers' modeling module whose globals it changes)
SUPPORTED = {
    "gemma3_text": ("apply_liger_kernel_to_gemma3_text", "transformers.models.gemma3.modeling_gemma3"),
    "gemma3": ("apply_liger_kernel_to_gemma3", "transformers.models.gemma3.modeling_gemma3"),
    "gemma2": ("apply_liger_kernel_to_gemma2", "transformers.models.gemma2.modeling_gemma2"),
    # Gemma 4 (liger-kernel >= 0.8.5): RMSNorm and GeGLU; its RoPE kernel does not fit Gemma 4's one-tensor
    # apply_rotary_pos_emb, so the rotary embedding stays the model's own (ROPE_KEPT)
    "gemma4_text": ("apply_liger_kernel_to_gemma4_text", "transformers.models.gemma4.modeling_gemma4"),
}
ROPE_KEPT = {"gemma4_text"}
# model types auto leaves on the model's own ops until Liger's patch for them has been checked against those ops
# on a GPU (tests/test_train_fused_gpu.py); train.fused_ops=liger applies it
AUTO_UNCHECKED = {"gemma4_text"}
TANH_GELU = "gelu_pytorch_tanh"


@dataclass
class Applied:
    """The resolved choice, what was patched (Liger module name -> count), and how to undo the module globals."""

    kind: str
    why: str
    modules: dict[str, int] = field(default_factory=dict)
    _saved: dict[str, dict[str, Any]] = field(default_factory=dict, repr=False)

    def record(self) -> dict[str, Any]:
        return {"fused_ops": self.kind, "fused_ops_why": self.why, "fused_ops_modules": self.modules}

    def restore(self) -> None:
        """Put back the module globals Liger replaced (apply_rotary_pos_emb, the norm and MLP classes)."""
        for name, before in self._saved.items():
            module = importlib.import_module(name)
            for key, value in before.items():
                if getattr(module, key, None) is not value:
                    setattr(module, key, value)
        self._saved = {}


def asked(value: Any) -> str:
    return value.value if hasattr(value, "value") else str(value)


def model_type(model: Any) -> str:
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return str(getattr(base.config, "model_type", "") or "")


def unavailable() -> str | None:
    """Why Liger's kernels cannot run here (None: they can)."""
    from gemma_run.training.loss import liger_unavailable

    return liger_unavailable("liger_kernel.transformers.monkey_patch")


def choose(value: Any, model: Any, zero3: bool = False, compiled: bool = False) -> tuple[str, str]:
    """(liger | none, why) for ``train.fused_ops`` and this model; raises where ``liger`` was asked and cannot run.
    ``zero3``: DeepSpeed ZeRO-3 partitions the parameters Liger's kernels read; auto keeps the model's ops there
    until that pairing is measured (an explicit ``liger`` is tried). ``compiled``: the decoder layers will be
    compiled (``train.compile_layers``), which fuses the same ops, and Liger's RoPE cannot be compiled."""
    name = asked(value)
    if name == "none":
        return "none", f"{KEY}=none: the model's own torch ops"
    if compiled and name == "auto":
        return "none", f"{KEY}=auto: none, the layers are compiled (train.compile_layers) and inductor fuses " \
                       "the norms, GeGLU and rotary embedding"
    if zero3 and name == "auto":
        return "none", f"{KEY}=auto: not used under DeepSpeed ZeRO-3 (not yet verified with partitioned " \
                       f"parameters; {KEY}=liger tries it)"
    mtype = model_type(model)
    if mtype not in SUPPORTED:
        return "none", f"{KEY}={name}: Liger has no body kernels for model type {mtype!r} here " \
                       f"(supported: {', '.join(SUPPORTED)})"
    if name == "auto" and mtype in AUTO_UNCHECKED:
        return "none", f"{KEY}=auto: Liger's {mtype} patch is not yet checked on a GPU here ({KEY}=liger applies it)"
    why = unavailable()
    if why and name == "liger":
        raise GemmaRunError(f"{KEY}=liger cannot run here: {why}", key=KEY,
                            fix=f"{KEY}=auto (Liger where it can run, the model's own ops elsewhere) or {KEY}=none")
    if why:
        return "none", f"{KEY}=auto: {why}"
    if not hasattr(importlib.import_module("liger_kernel.transformers.monkey_patch"), SUPPORTED[mtype][0]):
        import liger_kernel

        too_old = f"liger-kernel {getattr(liger_kernel, '__version__', '?')} has no {SUPPORTED[mtype][0]}"
        if name == "liger":
            raise GemmaRunError(f"{KEY}=liger cannot run here: {too_old}", key=KEY,
                                fix=f"pip install -U 'liger-kernel>=0.8.5', or {KEY}=auto")
        return "none", f"{KEY}=auto: {too_old}"
    ops = "rms_norm, geglu" if mtype in ROPE_KEPT else "rope, rms_norm, geglu"
    return "liger", f"{KEY}={name}: {ops} for {mtype}"


def check_early(value: Any, config_model_type: str) -> None:
    """``liger`` asked where it cannot run: raise before the model loads (the choice itself needs the model)."""
    from types import SimpleNamespace

    if asked(value) == "liger" and config_model_type in SUPPORTED:
        choose(value, SimpleNamespace(config=SimpleNamespace(model_type=config_model_type)))


def count_liger(model: Any) -> dict[str, int]:
    """Liger's modules in the model, by the name Liger gives the ones it patched in place."""
    out: dict[str, int] = {}
    for m in model.modules():
        name = m._get_name()
        if name.startswith("Liger"):
            out[name] = out.get(name, 0) + 1
    return out


def apply(value: Any, model: Any, zero3: bool = False, compiled: bool = False) -> Applied:
    """Resolve ``train.fused_ops`` and patch ``model`` (a transformers model, before or after peft) in place
    (the patch ``liger_kernel.gemma``, gemma_run.patches.liger_gemma)."""
    kind, why = choose(value, model, zero3, compiled)
    if kind == "none":
        log.info("fused ops: none (%s)", why)
        return Applied(kind, why)
    from gemma_run.patches import registry

    report = registry.apply_one("liger_kernel.gemma", model=model, why=why)
    if report.value is None:  # already patched: nothing more to undo here
        return Applied(kind, f"{why} (already applied)", count_liger(model))
    return report.value
