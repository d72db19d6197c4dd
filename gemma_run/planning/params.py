"""Split a (meta) model into the units a device map places, and count their parameters by component.

A unit is what accelerate never splits across devices: a module of one of the model's ``_no_split_modules``
classes (a decoder layer, a vision encoder layer), or a leaf module with its own parameters (an embedding, a
norm, an untied lm_head). Tied weights count once, with the module that owns them first (the input
embedding), as ``named_parameters`` lists them.

Gemma 4 adds two kinds of weights a decode step does not read whole. Its per-layer embeddings (E2B/E4B:
``embed_tokens_per_layer``, vocab x layers x 256, more than half of E2B's parameters) are a lookup table: they are
parameters like any other and transformers places them like any other unit (on a GPU under a device map), but a
step reads one row per sequence. Its MoE layers (26B-A4B: 128 experts, 8 per token) keep every expert in two 3-D
tensors (``experts.gate_up_proj``, ``experts.down_proj``) of which a token reads its top-k.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

COMPONENTS = ("embeddings", "per_layer_embeddings", "decoder_layers", "final_norm", "lm_head", "vision_tower",
              "audio_tower", "multimodal_projector", "other")
_LAYER_INDEX = re.compile(r"\.(?:layers|h|layer)\.(\d+)$")


@dataclass
class Tensor:
    """One parameter or buffer of a unit: where it lives and what it is."""

    name: str  # full name, e.g. model.layers.0.self_attn.q_proj.weight
    module: str  # its owning module, e.g. model.layers.0.self_attn.q_proj
    shape: tuple[int, ...]
    dtype: str  # torch dtype name without "torch."
    is_buffer: bool = False

    @property
    def numel(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n


@dataclass
class Unit:
    name: str  # module path, e.g. "model.layers.3" or "model.embed_tokens"
    component: str  # one of COMPONENTS
    tensors: list[Tensor] = field(default_factory=list)
    layer_index: int | None = None  # decoder layer index (KV cache, layer types)

    @property
    def params(self) -> int:
        return sum(t.numel for t in self.tensors if not t.is_buffer)


def _no_split(model: Any) -> set[str]:
    getter = getattr(model, "_get_no_split_modules", None)
    names = getter("auto") if getter is not None else getattr(model, "_no_split_modules", None)
    return set(names or [])


def _component(name: str, module: Any, model: Any, decoder_classes: set[str]) -> str:
    import torch

    if name.endswith("embed_tokens_per_layer"):
        return "per_layer_embeddings"
    if "vision_tower" in name:
        return "vision_tower"
    if "audio_tower" in name:
        return "audio_tower"
    if "multi_modal_projector" in name or name.rpartition(".")[2] in ("embed_vision", "embed_audio") \
            or ".embed_vision." in name or ".embed_audio." in name or "vision_embedder" in name:
        return "multimodal_projector"  # Gemma 4's embedders of image and audio features (the 12B's patch embedder)
    if module is model.get_input_embeddings() or isinstance(module, torch.nn.Embedding):
        return "embeddings"
    if module is model.get_output_embeddings():
        return "lm_head"
    if type(module).__name__ in decoder_classes:
        return "decoder_layers"
    if "norm" in type(module).__name__.lower() or name.endswith(("norm", "ln_f")):
        return "final_norm"
    return "other"


def own_tensors_only(model: Any, module: Any, no_split: set[str] | None = None) -> bool:
    """Whether the unit of ``module`` holds only its own tensors (a module with children that accelerate may
    split: its children are units of their own), not those of its whole subtree."""
    no_split = _no_split(model) if no_split is None else no_split
    return bool(list(module.children())) and type(module).__name__ not in no_split


def units(model: Any) -> list[Unit]:
    """The placement units of ``model`` in module order (the order a sequential device map fills)."""
    no_split = _no_split(model)
    decoder = {c for c in no_split if "Decoder" in c or c in ("GPT2Block",) or c.endswith("Block")}
    owner: dict[int, str] = {}  # id(tensor) -> unit name, first owner wins (tied weights count once)
    found: list[tuple[str, Any]] = []

    def walk(prefix: str, module: Any) -> None:
        if type(module).__name__ in no_split or not list(module.children()):
            found.append((prefix, module))
            return
        if any(True for _ in module.parameters(recurse=False)) or any(True for _ in module.buffers(recurse=False)):
            found.append((prefix, module))  # its own tensors only; children become units of their own
        for child_name, child in module.named_children():
            walk(f"{prefix}.{child_name}" if prefix else child_name, child)

    walk("", model)
    result: list[Unit] = []
    for name, module in found:
        own_only = own_tensors_only(model, module, no_split)
        tensors = []
        items = [*((n, p, False) for n, p in module.named_parameters(recurse=not own_only)),
                 *((n, b, True) for n, b in module.named_buffers(recurse=not own_only))]
        for tname, t, is_buffer in items:
            if id(t) in owner:
                continue
            owner[id(t)] = name
            full = f"{name}.{tname}" if name else tname
            tensors.append(Tensor(full, full.rpartition(".")[0], tuple(t.shape), str(t.dtype).removeprefix("torch."),
                                  is_buffer))
        if not tensors:
            continue  # e.g. a tied lm_head: its weight belongs to the input embedding
        m = _LAYER_INDEX.search("." + name)
        component = _component(name, module, model, decoder)
        index = int(m.group(1)) if m and component == "decoder_layers" else None
        result.append(Unit(name, component, tensors, index))
    return result


def by_component(unit_list: list[Unit]) -> dict[str, int]:
    """Parameters per component (components with none are left out) and the total."""
    counts = {c: 0 for c in COMPONENTS}
    for u in unit_list:
        counts[u.component] += u.params
    out = {c: n for c, n in counts.items() if n}
    out["total"] = sum(counts.values())
    return out


@dataclass(frozen=True)
class Moe:
    """The routed experts of a mixture-of-experts language model."""

    experts: int
    top_k: int

    def read_fraction(self, batch: int) -> float:
        """Expected share of the experts a step of ``batch`` tokens reads (each token picks top_k of experts;
        uniform routing): 1 - (1 - top_k / experts) ** batch. At batch 1: top_k / experts."""
        return 1.0 - (1.0 - self.top_k / self.experts) ** max(batch, 1)


def moe_of(text_cfg: Any) -> Moe | None:
    """The model's experts (Gemma 4: ``enable_moe_block``, ``num_experts``, ``top_k_experts``), None if dense."""
    experts = getattr(text_cfg, "num_experts", None)
    top_k = getattr(text_cfg, "top_k_experts", None) or getattr(text_cfg, "num_experts_per_tok", None)
    if not experts or not top_k or getattr(text_cfg, "enable_moe_block", True) is False:
        return None
    return Moe(int(experts), int(top_k))


def expert_tensors(unit_list: list[Unit]) -> list[Tensor]:
    """The routed experts' weights: the parameters of ``*.experts`` modules (one 3-D tensor per projection)."""
    return [t for u in unit_list for t in u.tensors if not t.is_buffer and t.module.endswith(".experts")]


def per_layer_embedding_tensors(unit_list: list[Unit]) -> list[Tensor]:
    return [t for u in unit_list if u.component == "per_layer_embeddings" for t in u.tensors if not t.is_buffer]


def active_params(unit_list: list[Unit], moe: Moe | None) -> int:
    """Parameters one token's forward uses: all but the experts it is not routed to (a dense model: all), the
    per-layer embedding tables and the input embedding counted whole as the published "active" counts do."""
    total = sum(u.params for u in unit_list)
    if moe is None:
        return total
    experts = sum(t.numel for t in expert_tensors(unit_list))
    return total - round(experts * (1 - moe.top_k / moe.experts))
