"""Schema of ``generation``: the parameters of text generation, shared by infer, test and bench."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum


class CacheImplementation(Enum):
    static = "static"  # transformers' StaticCache: the KV cache allocated once at prompt + max_new_tokens


@dataclass
class GenerationConfig:
    max_new_tokens: int = 64
    do_sample: bool = False  # false: greedy
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 50
    repetition_penalty: float = 1.0
    stop: list[str] = field(default_factory=list)  # stop strings, e.g. ["<end_of_turn>"]
    stream: bool = True  # stream tokens to the console (single prompt only)
    # The KV cache generate() uses. null: transformers' default (a dynamic cache that grows each step);
    # static: preallocated, fixed shapes, the precondition of a compiled decode step.
    cache_implementation: CacheImplementation | None = None
    # torch.compile the decode step (transformers' automatic compile: inductor, mode reduce-overhead = CUDA
    # graphs). Needs cache_implementation=static; transformers compiles on GPUs only. false also stops
    # transformers from compiling a static cache on its own, so each setting means one thing.
    compile: bool = False
