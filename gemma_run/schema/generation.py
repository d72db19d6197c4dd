"""Schema of ``generation``: the parameters of text generation, shared by infer, test and bench."""

from __future__ import annotations

from dataclasses import dataclass, field


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
