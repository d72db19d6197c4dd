"""``train.checkpoint_layers``: how many decoder layers recompute their activations in backward.

Full activation checkpointing (every layer) runs each layer's forward twice: with LoRA, whose backward skips the
frozen weights' gradients, that is about a third more compute than no checkpointing. Memory left over once the
model, the optimizer state and the loss are placed can hold some layers' activations instead, and each layer
that keeps them saves its recompute.

Which layers: the *first* N are checkpointed and the last ones keep their activations (Megatron-LM's "block"
recompute method, not its "uniform" spread). Backward runs from the last layer down, so the layers that kept
their activations are done and freed before the first recompute starts: the recompute's own working memory (one
layer's saved tensors) never adds to theirs. Spread evenly, every recompute would run while most of them are
still held, for the same compute saved.

``all`` is the default: the recompute that keeping activations saves costs memory traffic of its own (every kept
layer's activations written in forward and read back in backward), and with fused kernels that traffic costs
more than the recompute it saves, at several times the memory (docs/benchmarks.md, "Why the defaults are what
they are"). ``auto`` checkpoints as few layers as the GPU's memory allows: when training starts (model built,
LoRA on, DeepSpeed set up) it takes the memory this process may use (``train.gpu_memory_cap`` or what the GPU
has free), keeps ``HEADROOM`` of it, subtracts what is allocated and what all-layer checkpointing adds on top
(gradients and AdamW state, the loss, each layer's checkpointed input, one layer's backward) from the planner's
formulas (gemma_run/planning/kv.py, training.py), and lets the last layers keep their activations while they
fit (the last one whenever all-layer checkpointing fits: its activations take what the first recompute would).
It checkpoints every layer where it cannot budget: no CUDA device, DeepSpeed (which shards memory this estimate
does not model), or a model spread over several devices.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any

from omegaconf import DictConfig

from gemma_run.app.errors import ConfigError, GemmaRunError

log = logging.getLogger(__name__)

KEY = "train.checkpoint_layers"
# Fraction of the usable memory auto plans to fill: the estimate below is from formulas, not from counted
# tensors, and the caching allocator fragments
HEADROOM = 0.9
# layer_saved_bytes counts the model's own saved tensors; a layer with LoRA (all linear, bf16 autocast) saves a
# little more: the LoRA A/B inputs and outputs and peft's casts. The factor covers that (what saved_tensors_hooks
# count on a Gemma 3 layer, with a margin).
LORA_SAVED_FACTOR = 1.15
# One layer's backward holds the gradient of each activation beside it: about twice the forward's working memory
# (kv.layer_forward_bytes). The all-layer estimate made with it is checked against a GPU's measured peak in
# docs/benchmarks.md.
BACKWARD_WORK = 2
# LoRA dropout keeps, per targeted Linear, its input's mask and dropped copy: up to fp32 (4 bytes) an element
# of the input (CPU: the fp32 product; CUDA: a 1-byte mask and the bf16 copy for lora_A)
DROPOUT_BYTES = 4


@dataclass
class Choice:
    """What was decided: the indices of the checkpointed decoder layers, of how many, and why."""

    checkpointed: list[int]
    layers: int
    why: str
    estimate: dict[str, int] = field(default_factory=dict)

    def record(self) -> dict[str, Any]:
        out: dict[str, Any] = {"checkpointed_layers": len(self.checkpointed), "decoder_layers": self.layers,
                               "checkpoint_layers_why": self.why}
        if self.estimate:
            out["checkpoint_estimate"] = self.estimate
        return out


def parse(value: Any) -> str | int | float:
    """``all`` | ``auto`` | an int N >= 0 (layers) | a float in (0, 1] (a fraction of the layers)."""
    text = str(value).strip().lower()
    if text in ("all", "auto"):
        return text
    try:
        return int(text)  # "12": twelve layers
    except ValueError:
        pass
    try:
        fraction = float(text)  # "0.5": half of them (a number with a point is a fraction)
    except ValueError:
        fraction = -1.0
    if 0 < fraction <= 1:
        return fraction
    raise ConfigError(f"{KEY}={value!r} is not all, auto, a number of layers or a fraction in (0, 1]", key=KEY,
                      fix=f"{KEY}=auto (as many as memory needs), all, 12 (the first 12 layers) or 0.5 (half)")


def count(value: str | int | float, layers: int) -> int:
    """Checkpointed layers for a parsed value other than auto (a fraction rounds up: the memory-safe side)."""
    if value == "all":
        return layers
    if isinstance(value, float):
        return min(layers, math.ceil(value * layers))
    if not 0 <= value <= layers:
        raise ConfigError(f"{KEY}={value}: the model has {layers} decoder layers", key=KEY,
                          fix=f"{KEY}={layers} (all), fewer, or auto")
    return value


def check(cfg: DictConfig) -> list[GemmaRunError]:
    """The key's problems, found from the config alone (task validation)."""
    from gemma_run.planning.inputs import model_config, num_layers

    try:
        value = parse(cfg.train.checkpoint_layers)
        layers = num_layers(model_config(cfg))
        if layers and value != "auto":
            count(value, layers)
    except GemmaRunError as e:
        return [e]
    return []


def decoder_layers(model: Any) -> list[Any]:
    """The language model's decoder layers (peft and DeepSpeed wrappers unwrapped); a multimodal model's vision
    layers are not among them (they stay as the Trainer set them)."""
    from transformers.modeling_layers import GradientCheckpointingLayer

    base = getattr(model, "module", model)  # a DeepSpeed engine / DDP wrapper
    base = base.get_base_model() if hasattr(base, "get_base_model") else base
    try:
        layers = list(base.get_decoder().layers)
    except (AttributeError, ValueError):
        layers = [m for m in base.modules() if isinstance(m, GradientCheckpointingLayer)]
    if not layers or not all(isinstance(m, GradientCheckpointingLayer) for m in layers):
        raise GemmaRunError(f"{type(base).__name__}: no decoder layers with transformers' per-layer checkpointing",
                            key=KEY, fix=f"{KEY}=all")
    return layers


def select(model: Any, n: int) -> list[int]:
    """Checkpoint the first ``n`` decoder layers and let the others keep their activations; returns the indices
    checkpointed. Needs checkpointing enabled first (the Trainer's, or the model's own enable call), which gives
    every layer its checkpoint function."""
    layers = decoder_layers(model)
    if n and not hasattr(layers[0], "_gradient_checkpointing_func"):
        raise GemmaRunError("gradient checkpointing was not enabled on the model", key="train.gradient_checkpointing",
                            fix="train.gradient_checkpointing=true")
    for i, layer in enumerate(layers):
        layer.gradient_checkpointing = i < n
    return list(range(min(n, len(layers))))


def checkpointed(model: Any) -> list[int] | None:
    """Indices of the decoder layers that checkpoint now (read back from the layers); None for a model without
    transformers' per-layer switches."""
    try:
        return [i for i, layer in enumerate(decoder_layers(model)) if layer.gradient_checkpointing]
    except GemmaRunError:
        return None


# ---- auto: the arithmetic ----

def layer_bytes(shape: Any, tokens: int, dtype_bytes: int, lora_inputs: int, dropout: bool) -> int:
    """Bytes one decoder layer keeps for backward when not checkpointed: the planner's per-layer count with the
    LoRA factor, plus LoRA dropout's copies (``lora_inputs``: the input features of the layer's LoRA Linears)."""
    from gemma_run.planning import kv

    saved = kv.layer_saved_bytes(shape, tokens, dtype_bytes)
    if lora_inputs:
        saved = int(saved * LORA_SAVED_FACTOR)
    return saved + (tokens * lora_inputs * DROPOUT_BYTES if dropout else 0)


def plan_auto(layers: int, usable: int, allocated: int, state: int, loss: int, work: int, full: int,
              checkpoint_input: int) -> tuple[int, dict[str, int]]:
    """(layers to checkpoint, the figures): the most layers left whole that keep the peak within ``usable``.

    With the first n layers checkpointed the peak comes as the backward starts: everything allocated, the
    trainable state, the loss, n checkpointed inputs, the whole activations of the other layers, and one layer's
    backward working memory ``work``; or, when every layer is checkpointed, in the first recompute, which holds
    one layer's activations again. So the last layer keeps its activations at no cost in peak memory, and each
    one more costs ``full``."""
    fixed = allocated + state + loss

    def peak(n: int) -> int:
        return fixed + n * checkpoint_input + max(layers - n, 1) * full + work

    n = next((n for n in range(layers + 1) if peak(n) <= usable), layers)
    return n, {"usable_bytes": usable, "allocated_bytes": allocated, "state_bytes": state, "loss_bytes": loss,
               "layer_bytes": full, "work_bytes": work, "checkpoint_input_bytes": checkpoint_input,
               "planned_peak_bytes": peak(n)}


def _lora_inputs(layer: Any) -> tuple[int, bool]:
    """(input features summed over the layer's LoRA Linears, whether any drops out)."""
    from torch import nn

    total, dropout = 0, False
    for m in layer.modules():
        if hasattr(m, "lora_A") and hasattr(m, "lora_dropout") and len(m.lora_A):
            total += int(m.in_features)
            dropout |= any(isinstance(d, nn.Dropout) and d.p > 0 for d in m.lora_dropout.values())
    return total, dropout


def _usable(cap: str | None) -> int:
    import torch

    from gemma_run.training import memory_cap

    free, _total = torch.cuda.mem_get_info()
    mine = free + torch.cuda.memory_reserved()  # what this process holds plus what it could still get
    limit = memory_cap.cap_bytes(cap)
    return int(HEADROOM * (min(mine, limit) if limit else mine))


def auto(cfg: DictConfig, model: Any, loss_kernel: str) -> Choice:
    """``auto`` for this run and model (called once the Trainer set everything up, before the first step)."""
    import torch

    from gemma_run.planning import kv, training

    layers = decoder_layers(model)
    n_layers = len(layers)
    if not torch.cuda.is_available():
        return Choice(list(range(n_layers)), n_layers, "auto: no CUDA device to budget, every layer")
    if int(cfg.deepspeed.stage) > 0:
        return Choice(list(range(n_layers)), n_layers,
                      "auto: DeepSpeed shards memory this estimate does not model, every layer")
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    devices = {str(d) for d in (getattr(base, "hf_device_map", None) or {}).values()}
    if len(devices) > 1:
        return Choice(list(range(n_layers)), n_layers,
                      f"auto: the model is spread over {len(devices)} devices, every layer")
    shape = kv.shape_of(base.config.get_text_config())
    tokens = int(cfg.train.per_device_batch_size) * int(cfg.train.max_seq_length)
    dtype_bytes = 2 if next(base.parameters()).dtype in (torch.bfloat16, torch.float16) or \
        bool(getattr(base, "is_loaded_in_4bit", False)) else 4
    lora_inputs, dropout = _lora_inputs(layers[0])
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    spec = training.TrainSpec(lora=bool(cfg.lora.enabled), loss_kernel=loss_kernel)
    st = training.state_bytes(trainable, spec, dtype_bytes)
    n, figures = plan_auto(
        n_layers, usable=_usable(cfg.train.gpu_memory_cap), allocated=torch.cuda.memory_allocated(),
        state=st.gradients + st.optimizer, loss=training.logits_bytes(shape, tokens, dtype_bytes, spec) + kv.WORKSPACE,
        work=BACKWARD_WORK * kv.layer_forward_bytes(shape, tokens, dtype_bytes),
        full=layer_bytes(shape, tokens, dtype_bytes, lora_inputs, dropout),
        checkpoint_input=tokens * shape.hidden * dtype_bytes)
    gib, usable = figures["layer_bytes"] / 2**30, figures["usable_bytes"] / 2**30
    of = "train.gpu_memory_cap" if cfg.train.gpu_memory_cap else "the GPU"
    why = (f"auto: {n_layers - n} of {n_layers} layers keep their activations (~{gib:.2f} GiB each) within "
           f"{usable:.1f} GiB ({HEADROOM:.0%} of {of})")
    return Choice(list(range(n)), n_layers, why, figures)


def choose(cfg: DictConfig, model: Any, loss_kernel: str) -> Choice:
    """What ``train.gradient_checkpointing`` and ``train.checkpoint_layers`` mean for this model."""
    value = parse(cfg.train.checkpoint_layers)
    if not cfg.train.gradient_checkpointing or value == "all":
        try:
            n_layers = len(decoder_layers(model))
        except GemmaRunError:  # no per-layer switches to read: the Trainer's own setting stands, as it is
            why = f"{type(model).__name__} has no per-layer checkpointing switches; the Trainer's setting stands"
            return Choice([], 0, why)
        if not cfg.train.gradient_checkpointing:
            return Choice([], n_layers, "train.gradient_checkpointing=false")
        return Choice(list(range(n_layers)), n_layers, f"{KEY}=all")
    n_layers = len(decoder_layers(model))
    if value == "auto":
        return auto(cfg, model, loss_kernel)
    n = count(value, n_layers)
    return Choice(list(range(n)), n_layers, f"{KEY}={cfg.train.checkpoint_layers}")


def callback(cfg: DictConfig, model: Any, loss_kernel: str, holder: dict[str, Any]):  # -> TrainerCallback
    """A Trainer callback that applies the choice when training begins: transformers enables checkpointing on
    every layer inside ``Trainer.train()`` (after the Trainer is built, before ``on_train_begin``), so the
    choice can only go on after that. ``holder['choice']`` gets the :class:`Choice`."""
    from transformers import TrainerCallback

    class SelectCheckpointedLayers(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            choice = choose(cfg, model, loss_kernel)
            if cfg.train.gradient_checkpointing and choice.layers:
                select(model, len(choice.checkpointed))
                choice.checkpointed = checkpointed(model) or []
            log.info("activation checkpointing: %d of %d decoder layers (%s)", len(choice.checkpointed),
                     choice.layers, choice.why)
            holder["choice"] = choice

        def on_step_end(self, args, state, control, **kwargs):
            """auto: the first step's measured peak beside the planned one (the estimate's calibration)."""
            import torch

            choice = holder.get("choice")
            if not (choice and choice.estimate) or "first_step_peak_bytes" in choice.estimate:
                return
            peak = torch.cuda.max_memory_allocated()
            choice.estimate["first_step_peak_bytes"] = peak
            planned = choice.estimate["planned_peak_bytes"]
            if peak > 1.05 * planned:
                log.warning("train.checkpoint_layers=auto planned a %.2f GiB peak, the first step reached %.2f GiB "
                            "(train.checkpoint_layers=all is the safe setting if memory runs out)", planned / 2**30,
                            peak / 2**30)

    return SelectCheckpointedLayers()
