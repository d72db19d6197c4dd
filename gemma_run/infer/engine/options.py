"""What a run decodes with: ``generation.engine`` resolved once for the loaded model and machine, as one frozen
:class:`EngineOptions` (the loop, and what the fast engine's step runs as), with the reason for the choice."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from gemma_run.app.errors import GemmaRunError

# auto compiles the step only for runs that generate at least this many tokens: a first compile takes minutes
# and pays back only over a long run; a shorter run records the eager step as a CUDA graph, which starts in
# seconds (docs/benchmarks.md, "Why the engine is built this way").
COMPILE_MIN_TOKENS = 2048

# Where a compiled greedy step's pick runs, inside the one recorded graph either way: "with_step", compiled in
# one graph with the model's forward (what runs); "compiled_apart", the forward compiled as a sampling run's is
# and the pick compiled on its own; "eager", the pick as plain kernels after the compiled forward. The other two
# exist to be compared against it (tests, bench scripts), through EngineOptions.pick_placement.
PICK_PLACEMENTS = ("with_step", "compiled_apart", "eager")


@dataclass(frozen=True)
class EngineOptions:
    """The generation loop a run uses and, for the fast engine, what its decode step runs as."""

    name: str  # "fast" (gemma_run.infer.engine) | "hf" (transformers' generate)
    compile: bool = False
    exact: bool = True
    reason: str = ""
    graph: bool = False  # fast engine: the step replayed as a CUDA graph (gemma_run.infer.engine.graph)
    # fast engine: the decode step's attention implementation (None: the model's own; "gemma_run_decode":
    # gemma_run.infer.engine.decode_attention)
    attention: str | None = None
    fuse: bool = False  # fast engine: q/k/v and gate/up fused (gemma_run.infer.engine.fused_projections)
    pick: bool = True  # fast engine, greedy: the step picks its token on the device (engine.sampling.Picker)
    pick_placement: str = "with_step"  # one of PICK_PLACEMENTS; no config key sets it
    compile_scope: str = "step"  # a compiled step: "step" (one graph) or "layers" (generation.compile_scope)
    kernel_4bit: str = "bitsandbytes"  # fast engine, NF4 weights: "gemv4" (gemma_run.kernels.gemv4) or bitsandbytes

    def __post_init__(self) -> None:
        if self.pick_placement not in PICK_PLACEMENTS:
            raise ValueError(f"pick_placement={self.pick_placement!r}: expected one of {PICK_PLACEMENTS}")
        if self.compile_scope not in ("step", "layers"):
            raise ValueError(f"compile_scope={self.compile_scope!r}: expected step or layers")

    def describe(self) -> str:
        compiled = "compiled layers" if self.compile_scope == "layers" else "compiled step"
        step = " + ".join(w for w, on in ((compiled, self.compile), ("CUDA graph", self.graph),
                                          ("decode attention", self.attention is not None),
                                          ("fused projections", self.fuse),
                                          ("gemma-run 4-bit kernel", self.kernel_4bit == "gemv4"),
                                          ("greedy pick in the step", self.pick and self.name == "fast")) if on)
        return f"{self.name}{' + ' + step if step else ''} ({self.reason})"


HF = EngineOptions("hf", reason="default")


def unsupported(model: Any, g: Any, *, images: bool = False) -> str | None:
    """Why the fast engine cannot run this model/generation config, or None when it can."""
    if images:
        return "image inputs go through generate()"
    if float(g.repetition_penalty) != 1.0:
        return f"generation.repetition_penalty={g.repetition_penalty} is not implemented by the fast engine"
    if any(type(p).__name__ == "DTensor" for p in model.parameters()):
        return "the model is sharded over processes (device_map=tp): its steps are collective, through generate()"
    devices = {p.device for p in model.parameters()} | {b.device for b in model.buffers()}
    if len(devices) > 1 or (getattr(model, "hf_device_map", None) and len(set(model.hf_device_map.values())) > 1):
        return "the model is spread over several devices (a compiled step needs it on one)"
    if not getattr(model, "_can_compile_fullgraph", False):
        return f"transformers gives {type(model).__name__} no static KV cache"
    try:
        from transformers.cache_utils import StaticLayer  # noqa: F401  (transformers >= 4.56)
    except ImportError:
        return "this transformers has no StaticLayer cache (the fast engine needs transformers >= 4.56)"
    return None


def choose_engine(g: Any, model: Any, *, images: bool = False, tokens: int | None = None) -> EngineOptions:
    """``generation.engine`` for this model (:func:`_choose_loop`), with the fast engine's step attention
    (``generation.step_attention``; auto: the decode attention where the step is compiled, which fuses it) and
    fused projections (``generation.fuse_projections``; auto: on)."""
    engine = _choose_loop(g, model, images=images, tokens=tokens)
    if engine.name != "fast":
        return engine
    engine = replace(engine, fuse=g.fuse_projections is not False, pick=g.device_pick is not False,
                     compile_scope=getattr(g.compile_scope, "value", g.compile_scope),
                     kernel_4bit=kernel_4bit(g, model))
    wanted = getattr(g.step_attention, "value", g.step_attention)
    if wanted == "model" or (wanted is None and not engine.compile):
        return engine
    from gemma_run.infer.engine import decode_attention
    from gemma_run.patches import registry

    registry.apply_one("transformers.attention.gemma_run_decode")  # idempotent
    return replace(engine, attention=decode_attention.NAME)


def kernel_4bit(g: Any, model: Any) -> str:
    """``generation.kernel_4bit`` for this model: "gemv4" where asked for and the model has NF4 weights, else
    "bitsandbytes". gemv4 on a GPU without Triton is refused, naming the reason; on the CPU it is the kernel's
    reference path."""
    from gemma_run.infer.engine.packed_4bit import packable
    from gemma_run.kernels.gemv4 import triton_available

    wanted = getattr(g.kernel_4bit, "value", g.kernel_4bit)
    if wanted != "gemv4" or not any(packable(m) for m in model.modules()):
        return "bitsandbytes"
    if next(model.parameters()).device.type == "cuda" and not triton_available():
        raise GemmaRunError("generation.kernel_4bit=gemv4 needs Triton, which cannot be imported here",
                            key="generation.kernel_4bit", fix="pip install triton (it comes with CUDA builds of "
                            "torch), or generation.kernel_4bit=bitsandbytes")
    return "gemv4"


def _choose_loop(g: Any, model: Any, *, images: bool = False, tokens: int | None = None) -> EngineOptions:
    """``generation.engine`` for this model.

    auto takes the fast engine on a single CUDA GPU unless the run needs something only generate() does (then it
    says which). Its step is compiled when ``generation.compile`` says so or, unset, when the run generates at
    least COMPILE_MIN_TOKENS ``tokens`` (prompts x max_new_tokens; None: unknown, e.g. task=bench, which compiles);
    it is recorded as a CUDA graph on a GPU unless ``generation.cuda_graph=false``. fast refuses, naming the
    reason, where it cannot run. Off a GPU, auto takes generate() unless compile=true asks for the compiled step.
    """
    wanted = getattr(g.engine, "value", g.engine)
    compile_set = g.compile is not None
    if wanted == "hf":
        return EngineOptions("hf", bool(g.compile), reason="generation.engine=hf")
    why = unsupported(model, g, images=images)
    on_gpu = next(model.parameters()).device.type == "cuda"
    graph = on_gpu and g.cuda_graph is not False
    if wanted == "fast":
        if why:
            raise GemmaRunError(f"generation.engine=fast cannot run this: {why}", key="generation.engine",
                                fix="generation.engine=auto (falls back to generate()) or generation.engine=hf")
        compile = bool(g.compile) if compile_set else on_gpu and (tokens is None or tokens >= COMPILE_MIN_TOKENS)
        return EngineOptions("fast", compile, bool(g.exact), "generation.engine=fast", graph)
    if g.cache_implementation is not None:  # generate()'s own static cache (and compile, when asked)
        return EngineOptions("hf", bool(g.compile), reason="generation.cache_implementation is a generate() setting")
    if why:  # generate() compiles only a static cache, which was not asked for
        return EngineOptions("hf", False, reason=why)
    if g.compile is True:
        return EngineOptions("fast", True, bool(g.exact), "generation.compile=true", graph)
    if not on_gpu:
        return EngineOptions("hf", False, reason="not on a CUDA GPU: the fast engine's gain is CUDA graphs")
    if not graph and not g.compile:
        return EngineOptions("hf", False, reason="generation.cuda_graph=false and no compile: the fast engine "
                             "would gain nothing")
    if g.compile is False:
        return EngineOptions("fast", False, bool(g.exact), "generation.compile=false: the eager step as a CUDA "
                             "graph", graph)
    if tokens is not None and tokens < COMPILE_MIN_TOKENS:
        return EngineOptions("fast", False, bool(g.exact), f"{tokens} tokens to generate: the eager step as a "
                             f"CUDA graph (compiling, minutes the first time, pays off from ~{COMPILE_MIN_TOKENS}; "
                             "generation.compile=true forces it)", graph)
    return EngineOptions("fast", True, bool(g.exact), "one CUDA GPU", graph)
