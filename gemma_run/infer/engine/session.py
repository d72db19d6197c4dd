"""A session: the static KV cache of one (batch, length) shape and the decode step that reads and writes it,
compiled and recorded as a CUDA graph at its first run, each falling back (with a warning) when it fails.

A session lives as long as its model's weights (:class:`gemma_run.infer.engine.decoder.Decoder` keeps it), so a
step is compiled and recorded once per shape and replayed by every later prompt of that shape: the cache and the
attention mask are reset in place, at the addresses the recorded graph reads.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from gemma_run.infer.engine.sampling import Picker
from gemma_run.infer.engine.step import make_step

log = logging.getLogger(__name__)

BUCKET = 256  # cache lengths are multiples of this: one recorded graph serves every prompt up to that length


@dataclass(frozen=True)
class SessionKey:
    """What a session is made for: its shape and what its step runs as (as asked; see :class:`Session` for what
    it ended up running as)."""

    batch: int
    length: int  # positions the static cache holds (:func:`static_length`)
    compile: bool
    exact: bool = True
    graph: bool = False  # record the step as a CUDA graph at its first run
    attention: str | None = None  # the step's attention implementation (None: the model's own)
    greedy: bool = False  # the step picks its own token (a Picker's buffers)
    pick_placement: str = "with_step"
    compile_scope: str = "step"  # a compiled step: the whole step ("step") or each decoder layer ("layers")


@dataclass
class Session:
    """A static cache of one :class:`SessionKey` and the step that reads and writes it."""

    key: SessionKey
    cache: Any
    step: Any  # (input_ids [B, 1], position_ids [B, 1], cache_position [1], attention_mask [B, L]) -> logits [B, V]
    compiled: bool  # the step runs compiled (False once compiling failed)
    graph: bool  # the step is to be replayed as a CUDA graph (False once recording failed)
    mask: Any = None  # the attention mask [B, length]: one buffer, so a recorded graph reads it in place
    replay: Any = None  # the recorded step (gemma_run.infer.engine.graph.Replay), once recorded
    compile_seconds: float | None = None  # first step's time, compile and recording included (None until it ran)
    steps_run: int = 0
    picker: Picker | None = None  # greedy sessions: the device state the step picks its token with

    @classmethod
    def make(cls, model: Any, key: SessionKey) -> Session:
        config = model.config
        text = getattr(config, "get_text_config", lambda: config)()
        cache = static_cache(text.num_hidden_layers, key.length)
        step = make_step(model, cache, compile=key.compile, exact=key.exact, attention=key.attention,
                         greedy=key.greedy, pick_placement=key.pick_placement, compile_scope=key.compile_scope)
        return cls(key, cache, step, key.compile, key.graph)

    @property
    def batch(self) -> int:
        return self.key.batch

    @property
    def length(self) -> int:
        return self.key.length

    @property
    def shared(self) -> tuple[int, ...]:
        """Arguments a recorded step reads in place: the mask; for a greedy step, all (the picker's buffers)."""
        return tuple(range(len(Picker.FIELDS))) if self.picker is not None else (3,)

    def start(self, attention_mask: Any) -> None:
        """Make the session ready for a prompt whose mask is ``attention_mask`` [B, P] (in inference mode: the
        cache and mask are inference tensors once used): the cache emptied, the mask set, a greedy session's
        picker made."""
        import torch

        self.cache.reset()
        if self.mask is None:
            self.mask = torch.ones(self.batch, self.length, dtype=torch.long, device=attention_mask.device)
        self.mask.fill_(1)
        self.mask[:, :attention_mask.shape[1]] = attention_mask
        if self.key.greedy and self.picker is None:
            self.picker = Picker.make(self.batch, self.length, self.mask)

    def decode(self, model: Any, args: tuple[Any, ...]) -> Any:
        """One decode step on ``args``: the first compiles and records it (:meth:`first_step`, timed and logged),
        the others replay it."""
        if self.steps_run == 0:
            start = time.perf_counter()
            logits = self.first_step(model, args)
            _sync(args[0].device)
            self.compile_seconds = time.perf_counter() - start
            if self.compiled or self.graph:
                log.info("%s the decode step for batch %d x %d positions in %.1f s",
                         " and ".join(w for w, on in (("compiled", self.compiled), ("recorded", self.graph)) if on),
                         self.batch, self.length, self.compile_seconds)
        else:
            logits = self.replay(*args) if self.replay is not None else self.step(*args)
        self.steps_run += 1
        return logits

    def first_step(self, model: Any, args: tuple[Any, ...]) -> Any:
        """Run the first decode step: compile it (falling back to the eager step if compiling fails), then record
        it as a CUDA graph (falling back to plain calls if recording fails), each fallback with a warning."""
        rewind = rewinder(self.cache, *(self.picker.advanced() if self.picker is not None else ()))
        try:
            logits = self.step(*args)
        except Exception as e:  # torch.compile fails in many exception types
            if not self.compiled:
                raise
            log.warning("could not compile the decode step (%s: %s); it runs eagerly. generation.compile=false "
                        "skips the attempt", type(e).__name__, _first_line(e))
            k = self.key
            self.step = make_step(model, self.cache, compile=False, exact=k.exact, attention=k.attention,
                                  greedy=k.greedy, pick_placement=k.pick_placement)
            self.compiled = False
            rewind()
            logits = self.step(*args)
        if not self.graph:
            return logits
        from gemma_run.infer.engine.graph import Replay

        try:
            self.replay = Replay(self.step, args, shared=self.shared, rewind=rewind)
            return self.replay(*args)
        except Exception as e:
            rewind()  # a failed recording may have left the cache's position anywhere: run the step once more
            logits = self.step(*args)
            log.warning("could not record the decode step as a CUDA graph (%s: %s); it runs without one, "
                        "launch-bound. generation.cuda_graph=false skips the attempt", type(e).__name__,
                        _first_line(e))
            self.graph, self.replay = False, None
            return logits


def static_length(needed: int, context: int | None) -> int:
    """Positions the static cache holds for ``needed`` (prompt + new tokens): rounded up to ``BUCKET``, at most
    the model's context. The planner sizes the cache with the same function."""
    length = -(-needed // BUCKET) * BUCKET
    return min(length, context) if context else length


def static_cache(layers: int, length: int) -> Any:
    """A static cache whose every layer holds ``length`` positions, sliding-window layers included.

    transformers' own StaticCache gives sliding layers a rolling window tracked by a Python int, which a compiled
    step guards on: it recompiles as the window fills and on every step once it is full (prompts over the window,
    1024 tokens on Gemma 3). With full-length layers every step has the same shapes and no Python state, and
    the sliding window is still applied, by the model's sliding-window mask on absolute positions. The price is
    memory: sliding layers keep ``length`` positions instead of the window.
    """
    from transformers.cache_utils import Cache, StaticLayer

    return Cache(layers=[StaticLayer(max_cache_len=length) for _ in range(layers)])


def rewinder(cache: Any, *state: Any) -> Callable[[], None]:
    """A function that puts the cache's position, and the tensors ``state``, back to what they are now.

    transformers >= 5 keeps each static layer's position on the device (``cumulative_length``, advanced in place
    by every forward, so a compiled or recorded step needs no Python state); running a step again (warm-up,
    recording, a retry after a failed compile) must start from the same position to write the same slot."""
    import torch

    saved = [(layer.cumulative_length, layer.cumulative_length.clone()) for layer in cache.layers
             if torch.is_tensor(getattr(layer, "cumulative_length", None))]
    saved += [(t, t.clone()) for t in state]

    def rewind() -> None:
        for tensor, value in saved:
            tensor.copy_(value)

    return rewind


def _first_line(e: BaseException) -> str:
    return str(e).splitlines()[0][:200] if str(e) else ""


def _sync(device: Any) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)
