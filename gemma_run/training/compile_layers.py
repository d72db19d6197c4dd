"""``train.compile_layers``: each decoder layer compiled by torch.compile (regional compilation).

Why: a LoRA step of a Gemma layer is hundreds of small kernels around its few large products: norms in fp32,
the rotary embedding, the GeGLU, LoRA's seven adapter pairs, residual adds, each launched from Python, forward,
recompute and backward. On a fast GPU the device then waits for the host's launches for part of every step
(``task.profile=true`` shows it; docs/benchmarks.md has the figure). Inductor fuses the elementwise work into few
kernels and launches them from generated code.

Regional, not the whole model: the layers are identical, so one layer's compiled code serves all of them
(transformers' sliding and global layers differ in their mask, which gives a second graph), the first step
compiles in a minute rather than many, and the loss, the embedding and the head stay as they are
(``train.loss_kernel``'s fused kernel keeps working). Compiled in place with ``Module.compile``: the state dict,
the adapter's keys and peft's wrapping do not change. transformers' activation checkpointing wraps the layer's
forward (``GradientCheckpointingLayer``), so the checkpoint is traced into the compiled layer, which recomputes
as before. Shapes may vary (``dynamic`` left to torch's automatic dynamic shapes: a second sequence length
compiles one shape-generic graph, not one per length).

Liger's rotary embedding is ``torch.compiler.disable``'d inside liger_kernel: in a compiled, checkpointed layer
it would make the whole layer run uncompiled. So compiled layers take the model's own ops (``train.fused_ops``
auto gives none, and inductor fuses them itself); ``train.fused_ops=liger`` with ``train.compile_layers=true`` is
refused.

- null (auto): on for LoRA/QLoRA/full training on a CUDA GPU without DeepSpeed, unless ``train.fused_ops=liger``
  was asked; off elsewhere (a CPU: minutes of compiling for little; DeepSpeed: its ZeRO hooks on parameters are
  not verified with compiled layers).
- true: compiled wherever torch.compile runs (a CPU included); false: never.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from gemma_run.app.errors import ConfigError, GemmaRunError

log = logging.getLogger(__name__)

KEY = "train.compile_layers"


@dataclass
class Choice:
    """Whether the decoder layers get compiled, why, (once applied) how many were, and (once trained) the graphs
    torch.compile made for them and the graph breaks it met (a break leaves part of a layer uncompiled)."""

    on: bool
    why: str
    layers: int = 0
    graphs: int | None = None
    breaks: dict[str, int] = field(default_factory=dict)
    _before: tuple[int, dict[str, int]] = field(default=(0, {}), repr=False)

    def record(self) -> dict[str, Any]:
        out: dict[str, Any] = {"compile_layers": self.layers, "compile_layers_why": self.why}
        if self.graphs is not None:
            out.update(compile_layers_graphs=self.graphs, compile_layers_graph_breaks=sum(self.breaks.values()))
        return out

    def finish(self) -> None:
        """Read torch.compile's counters once training ran: graphs made and breaks met since :func:`apply`."""
        if not self.layers:
            return
        graphs, breaks = _counters()
        self.graphs = graphs - self._before[0]
        self.breaks = {k: n - self._before[1].get(k, 0) for k, n in breaks.items() if n > self._before[1].get(k, 0)}
        if self.breaks:
            reason, count = max(self.breaks.items(), key=lambda kv: kv[1])
            log.warning("compiled layers: %d graph break(s), so parts of the layers ran uncompiled; most often "
                        "(%d): %s. train.compile_layers=false turns compiling off", sum(self.breaks.values()),
                        count, reason[:300])
        else:
            log.info("compiled layers: %d graph(s) for %d layers, no graph breaks", self.graphs, self.layers)


def _counters() -> tuple[int, dict[str, int]]:
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"]), dict(counters["graph_break"])


def choose(value: bool | None, fused_ops: str, *, cuda: bool, deepspeed: bool) -> Choice:
    """Resolve ``train.compile_layers`` before the model loads (``fused_ops``: ``train.fused_ops`` as asked)."""
    if value is True and fused_ops == "liger":
        raise ConfigError(f"{KEY}=true and train.fused_ops=liger cannot go together: Liger's rotary embedding is "
                          "excluded from torch.compile, so a compiled layer would run uncompiled",
                          key=KEY, fix=f"{KEY}=true with train.fused_ops=auto (inductor fuses the norms, GeGLU and "
                                       f"rotary embedding itself), or train.fused_ops=liger with {KEY}=false")
    if value is False:
        return Choice(False, f"{KEY}=false")
    if value is True:
        return Choice(True, f"{KEY}=true")
    if fused_ops == "liger":
        return Choice(False, f"{KEY}=auto: off, train.fused_ops=liger was asked (Liger's rotary embedding is "
                             "excluded from torch.compile)")
    if not cuda:
        return Choice(False, f"{KEY}=auto: off without a CUDA GPU")
    if deepspeed:
        return Choice(False, f"{KEY}=auto: off under DeepSpeed (compiled layers are not verified with its hooks; "
                             f"{KEY}=true tries it)")
    return Choice(True, f"{KEY}=auto: on (a CUDA GPU, no DeepSpeed)")


def apply(choice: Choice, model: Any) -> Choice:
    """Compile ``model``'s decoder layers in place (after peft wrapped them) when ``choice.on``."""
    if not choice.on:
        log.info("compiled layers: none (%s)", choice.why)
        return choice
    from gemma_run.training.activation_checkpointing import decoder_layers

    try:
        layers = decoder_layers(model)
    except GemmaRunError:
        layers = []
    if not layers:
        choice.on, choice.why = False, f"{choice.why}; but the model has no transformers decoder layers to compile"
        log.warning("compiled layers: none (%s)", choice.why)
        return choice
    choice._before = _counters()
    from gemma_run.patches import registry

    registry.apply_one("torch._dynamo.recompile_limit", compiled=True)  # more variants than torch's 8
    for layer in layers:
        layer.compile()
    choice.layers = len(layers)
    log.info("compiled layers: %d %s (%s); the first steps compile them", len(layers), type(layers[0]).__name__,
             choice.why)
    return choice
