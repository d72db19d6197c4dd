"""Schema of ``generation``: the parameters of text generation, shared by infer, test and bench."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum


class Engine(Enum):
    auto = "auto"  # fast on one CUDA GPU when the run allows it (gemma_run.infer.engine.unsupported), else hf
    fast = "fast"  # gemma-run's loop: static KV cache + a compiled (CUDA-graph) decode step
    hf = "hf"  # transformers' generate()


class StepAttention(Enum):
    # gemma_run.infer.engine.decode_attention: one query token against the cache, fused when compiled
    decode = "decode"
    model = "model"  # the model's own attention implementation (sdpa)


class CompileScope(Enum):
    step = "step"  # the whole decode step as one graph (fused across layers; one compile per model)
    layers = "layers"  # each decoder layer through one compiled function: a graph per distinct layer kind


class Kernel4bit(Enum):
    auto = "auto"  # bitsandbytes' own product (gemma_run/quant/infer_format.py may load int4 instead of NF4)
    bitsandbytes = "bitsandbytes"  # bitsandbytes' own NF4 product (the faster measured: docs/benchmarks.md)
    gemv4 = "gemv4"  # gemma-run's 4-bit matrix-vector kernel (gemma_run/kernels/gemv4.py)


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
    # Which loop generates. auto: the fast engine on a single CUDA GPU (unless an hf-only key below is set),
    # generate() elsewhere; the run's log and result say which ran and why.
    engine: Engine = Engine.auto
    # hf engine only. The KV cache generate() uses. null: transformers' default (a dynamic cache that grows each step);
    # static: preallocated, fixed shapes, the precondition of a compiled decode step.
    cache_implementation: CacheImplementation | None = None
    # torch.compile the decode step (inductor, with its batch-1 kernels tuned). null: the fast engine on a GPU
    # compiles for runs of >= 2048 generated tokens (prompts x max_new_tokens) and in task=bench, where the
    # minutes of a first compile pay back; shorter runs take the eager step as a CUDA graph. With engine=hf it
    # needs cache_implementation=static (transformers' own compile, GPUs only); false also stops transformers
    # from compiling a static cache on its own, so each setting means one thing. The compiled code is cached in
    # env.vars.TORCHINDUCTOR_CACHE_DIR.
    compile: bool | None = None
    # fast engine: record the decode step (compiled or eager) as a CUDA graph and replay it per token, so the
    # thousand kernels of a step cost one launch. null: on a CUDA GPU; false: plain calls (launch-bound; for
    # debugging a step that cannot be recorded, which otherwise falls back with a warning).
    cuda_graph: bool | None = None
    # Compiled steps round bf16 where eager rounds it (inductor's emulate_precision_casts), so greedy tokens
    # equal the eager path's; false lets inductor keep fp32 between fused ops (not bit-equal to eager).
    exact: bool = True
    # fast engine: the decode step's attention. decode: one query token against the cache as plain products on
    # the key/value heads (gemma_run/infer/engine/decode_attention.py), fused by inductor into the compiled step;
    # model: the model's own (sdpa). null: decode where the step is compiled, model otherwise. The prompt's pass
    # always uses the model's own.
    step_attention: StepAttention | None = None
    # fast engine, compiled step: what torch.compile compiles. step: the whole step as one graph. layers: every
    # decoder layer through one compiled function (each layer given its own slice of the cache), so layers of one
    # kind share their compiled code: one graph for Gemma 3 however deep the model, a few for Gemma 4; the
    # embedding, final norm, head and greedy pick stay eager inside the recorded CUDA graph. The first compile
    # takes a fraction of the time.
    compile_scope: CompileScope = CompileScope.step
    # fast engine: sibling projections that read one input (attention's q/k/v, the MLP's gate/up) fused into one
    # matrix each, so a batch-1 step runs three fewer, larger products a layer
    # (gemma_run/infer/engine/fused_projections.py; plain bf16/fp16/fp32 linears, and quant=int4's weights stacked;
    # bitsandbytes' stay as they are). null: on with the fast engine. The loaded model is changed in place (its
    # state dict's names too), for this run's generation.
    fuse_projections: bool | None = None
    # fast engine, quant=4bit: what multiplies the NF4 weights in the decode step. gemv4: gemma-run's 4-bit
    # kernel reading the same bytes (gemma_run/infer/engine/packed_4bit.py; exactly bitsandbytes' values);
    # bitsandbytes: its own product, faster as measured (docs/benchmarks.md, "4-bit kernels"). Either one
    # keeps the weights NF4 (quant.infer_as=auto loads int4 otherwise). auto: bitsandbytes. The prompt's pass and
    # training always multiply as bitsandbytes does.
    kernel_4bit: Kernel4bit = Kernel4bit.auto
    # fast engine, greedy decoding: the decode step picks its own next token on the device (argmax, EOS held back
    # until min_new_tokens, finished rows padded) and advances its positions, so the loop only replays the recorded
    # graph: no per-token kernels or copies outside it. null: on; false: the loop picks after each step, as it
    # does when sampling (for comparison).
    device_pick: bool | None = None
