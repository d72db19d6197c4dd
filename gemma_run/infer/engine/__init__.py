"""The fast generation engine: a static KV cache and one decode step, compiled and recorded as a CUDA graph,
driven by a lean loop of its own.

Why not ``model.generate``: a batch-1 decode step is bound by reading the weights once, a few milliseconds on a
GPU, while transformers' generate loop spends more than that in Python around the model each token, even when
the forward is compiled (logits processors, stopping criteria, kwargs bookkeeping). This loop does per token only
what decoding needs: one replay of the step recorded as a CUDA graph (:mod:`.graph`; the step compiled by
inductor, or eager when compiling would not pay back), picking the next token on the device, and a look at
finished rows every few steps (:mod:`.watch`), so the CPU stays ahead of the GPU. Greedy decoding picks inside
the step itself (:mod:`.sampling`): the step reads its token, position and counters from device buffers and
advances them, so a token costs the CPU one graph launch and the GPU no kernel outside the recorded step.

Read top-down:

- :mod:`.options`: what a run decodes with (``generation.engine`` resolved once, :class:`EngineOptions`);
- :mod:`.loop`: :func:`generate`: the prompt's pass, then decoding on the device or on the host;
- :mod:`.decoder`: a model's sessions by name (:class:`SessionKey`), and its fused projections;
- :mod:`.session`: one shape's static cache and its step, compiled and recorded, with the fallbacks;
- :mod:`.step`: the step itself; :mod:`.sampling`: the device-side and host-side pick;
- :mod:`.graph`, :mod:`.decode_attention`, :mod:`.fused_projections`, :mod:`.packed_4bit`: what makes the
  step fast.

The model is the one ``gemma_run.loading.load`` gave (any transformers causal LM whose cache can be static).
What this engine does not do (repetition penalty, image inputs, a model spread over devices) is reported by
:func:`unsupported`, and ``generation.engine=auto`` then takes generate().
"""

from gemma_run.infer.engine.decoder import Decoder
from gemma_run.infer.engine.loop import generate
from gemma_run.infer.engine.options import HF, EngineOptions, choose_engine, unsupported
from gemma_run.infer.engine.session import SessionKey, static_length

__all__ = ["HF", "Decoder", "EngineOptions", "SessionKey", "choose_engine", "generate", "static_length",
           "unsupported"]
