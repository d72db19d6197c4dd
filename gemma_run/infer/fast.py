"""The fast generation engine: a static KV cache and one compiled decode step, driven by a lean loop of our own.

Why not ``model.generate``: at batch 1 a decode step of a 4B model reads 7.8 GB, 2.6 ms at an H100's bandwidth,
while transformers' generate loop spends 6-13 ms of Python per token around the model even when the forward is
compiled (logits processors, stopping criteria, kwargs bookkeeping; measured on an H100). This
loop does per token only what decoding needs: one replay of the step recorded as a CUDA graph
(:mod:`gemma_run.infer.graph`; the step compiled by inductor, or eager when compiling would not pay back),
picking the next token on the device, and a check for finished rows every ``CHECK_EVERY`` steps, so the CPU
stays ahead of the GPU. Greedy decoding picks inside the step itself (:class:`Picker`): the step reads its
token, position and counters from device buffers and advances them, so a token costs the CPU one graph launch
and the GPU no kernel outside the recorded step.

The model is the one ``gemma_run.loading.load`` gave (any transformers causal LM whose cache can be static); the
prompt goes through an eager forward (compute-bound, and it fills the cache at the fixed addresses the recorded
step reads). One :class:`Session` per (batch, cache length) is kept on the model and reused, so a CUDA graph is
recorded once per shape; cache lengths are rounded up to ``BUCKET`` tokens so that prompts of similar lengths
share it.

Sampling, when asked for, is temperature / top-k / top-p on the step's logits, as generate() does it; what this
engine does not do (repetition penalty, image inputs, a model spread over devices) is reported by
:func:`unsupported`, and ``generation.engine=auto`` then takes generate().
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

BUCKET = 256  # cache lengths are multiples of this: one recorded graph serves every prompt up to that length
CHECK_EVERY = 8  # steps between looks at which rows have finished (each look waits for the GPU)
EOS_SLOTS = 8  # EOS ids a greedy step can know on the device; a run with more picks its tokens on the host


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


@dataclass
class Session:
    """A static cache of one (batch, length) shape and the compiled step that reads and writes it."""

    batch: int
    length: int
    cache: Any
    step: Any  # (input_ids [B, 1], position_ids [B, 1], cache_position [1], attention_mask [B, L]) -> logits [B, V]
    compiled: bool
    graph: bool  # replay the step as a CUDA graph (recorded at the first decode step)
    attention: str | None = None  # the step's attention implementation (None: the model's own)
    mask: Any = None  # the attention mask [B, length]: one buffer, so a recorded graph reads it in place
    replay: Any = None  # the recorded step (gemma_run.infer.graph.Replay), once recorded
    compile_seconds: float | None = None  # first step's time, compile and recording included (None until it ran)
    steps_run: int = 0
    picker: Picker | None = None  # greedy sessions: the device state the step picks its token with

    @property
    def shared(self) -> tuple[int, ...]:
        """Arguments a recorded step reads in place: the mask; for a greedy step, all (the picker's buffers)."""
        return tuple(range(len(Picker.FIELDS))) if self.picker is not None else (3,)

    def replay_alone(self, steps: int) -> None:
        """Replay the recorded step ``steps`` (< length) times from an empty cache, nothing else between replays:
        what bench scripts time as the step's own cost. Call in inference mode, after a run recorded it."""
        self.cache.reset()
        if self.picker is not None:
            for buffer in (self.picker.position, self.picker.cache_position, self.picker.index):
                buffer.zero_()
        for _ in range(steps):
            self.replay(*self.replay.inputs)

    def first_step(self, model: Any, args: tuple[Any, ...], exact: bool) -> Any:
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
            self.step, self.compiled = _make_step(model, self.cache, False, exact, self.attention,
                                                  self.picker is not None), False
            rewind()
            logits = self.step(*args)
        if not self.graph:
            return logits
        from gemma_run.infer.graph import Replay

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


def fuse_projections(model: Any) -> int:
    """Fuse the model's q/k/v and gate/up projections (:mod:`gemma_run.infer.fused_projections`), once; returns
    the number of fused groups. Sessions made before are dropped: their recorded steps read the old weights."""
    from gemma_run.infer import fused_projections

    if fused_projections.MARK in model.__dict__:
        return fused_count(model)
    from gemma_run.patches import registry

    model.__dict__.pop("_gemma_run_sessions", None)
    count = registry.apply_one("model.fused_projections", model=model).value
    log.info("fused %d groups of projections (q/k/v, gate/up) for the decode step", count)
    return count


def unfuse_projections(model: Any) -> int:
    """Undo :func:`fuse_projections` (the model's own linears back, e.g. to train it next); its sessions go too."""
    from gemma_run.infer import fused_projections

    if fused_projections.MARK not in model.__dict__:
        return 0
    model.__dict__.pop("_gemma_run_sessions", None)
    return fused_projections.unfuse(model)


def fused_count(model: Any) -> int:
    """How many groups of projections the model has fused (0: none)."""
    from gemma_run.infer import fused_projections

    return int(model.__dict__.get(fused_projections.MARK, 0))


def sessions_report(model: Any) -> list[dict[str, Any]]:
    """What each session of the model ran as: its shape, whether its step ended up compiled and replayed as a
    CUDA graph (either can have fallen back, with a warning) and picked its own tokens, with the first step's
    seconds."""
    return [{"batch": s.batch, "length": s.length, "compiled": s.compiled, "cuda_graph": s.replay is not None,
             "step_attention": s.attention or "model", "device_pick": s.picker is not None,
             "first_step_seconds": None if s.compile_seconds is None else round(s.compile_seconds, 2)}
            for s in model.__dict__.get("_gemma_run_sessions", {}).values()]


def static_length(needed: int, context: int | None) -> int:
    """Positions the static cache holds for ``needed`` (prompt + new tokens): rounded up to ``BUCKET``, at most
    the model's context. The planner sizes the cache with the same function."""
    length = -(-needed // BUCKET) * BUCKET
    return min(length, context) if context else length


def session(model: Any, batch: int, needed: int, *, compile: bool, exact: bool = True,
            graph: bool = False, attention: str | None = None, greedy: bool = False) -> Session:
    """The session for ``batch`` rows of up to ``needed`` positions, made on first use and kept on the model.
    ``greedy``: its step picks the next token itself (:class:`Picker`; its buffers are made by the first run)."""
    config = model.config
    text = getattr(config, "get_text_config", lambda: config)()
    context = getattr(text, "max_position_embeddings", None)
    length = static_length(needed, context)
    sessions = model.__dict__.setdefault("_gemma_run_sessions", {})
    key = (batch, length, compile, exact, graph, attention, greedy)
    if key not in sessions:
        cache = static_cache(text.num_hidden_layers, length)
        sessions[key] = Session(batch, length, cache, _make_step(model, cache, compile, exact, attention, greedy),
                                compile, graph, attention)
    return sessions[key]


@dataclass
class Picker:
    """The device state of a greedy decode step, which picks its own next token (:func:`_greedy`).

    One step reads the current token, its position ids and cache position, and the step's index; it picks the
    next token (EOS held back while the index is under ``min_new``, ``pad`` for rows already done), writes it
    into ``out`` at the index and into ``token``, marks rows that reached an EOS ``done``, and advances the
    positions and the index by one. Every buffer keeps its address for the session's life, so the step records
    as a CUDA graph that needs no input at all: the loop only replays it. Values change between runs, shapes
    never (``eos`` has :data:`EOS_SLOTS` slots, the unused ones repeating the first id).
    """

    token: Any  # [B, 1] long: the token the next step reads
    position: Any  # [B, 1] long: its position ids
    cache_position: Any  # [1] long: its slot in the cache
    mask: Any  # [B, L] the session's attention mask
    index: Any  # [] long: the column of ``out`` the next step writes
    min_new: Any  # [] long
    eos: Any  # [EOS_SLOTS] long
    use_eos: Any  # [] bool: whether ``eos`` holds any id
    pad: Any  # [] long
    done: Any  # [B] bool
    out: Any  # [B, L] long: the new tokens

    FIELDS = ("token", "position", "cache_position", "mask", "index", "min_new", "eos", "use_eos", "pad", "done",
              "out")

    @classmethod
    def make(cls, batch: int, length: int, mask: Any) -> Picker:
        import torch

        def zeros(*shape: int, dtype: Any = torch.long) -> Any:
            return torch.zeros(shape, dtype=dtype, device=mask.device)

        return cls(zeros(batch, 1), zeros(batch, 1), zeros(1), mask, zeros(), zeros(), zeros(EOS_SLOTS),
                   zeros(dtype=torch.bool), zeros(), zeros(batch, dtype=torch.bool), zeros(batch, length))

    def args(self) -> tuple[Any, ...]:
        return tuple(getattr(self, f) for f in self.FIELDS)

    def advanced(self) -> tuple[Any, ...]:
        """The buffers a step changes in place (``out`` aside: a rerun rewrites its column with the same token)."""
        return self.token, self.position, self.cache_position, self.index, self.done

    def start(self, first: Any, positions: Any, cache_position: int, eos: list[int], min_new: int, pad: int,
              done: Any) -> None:
        """Set up a run whose prompt's pass picked ``first`` [B] (``done`` [B]: rows it ended), the next step
        being at ``positions`` [B, 1] and cache slot ``cache_position``."""
        import torch

        ids = [e for e in eos if e >= 0]
        self.eos.copy_(torch.tensor((ids + ids[:1] * EOS_SLOTS)[:EOS_SLOTS] if ids else [0] * EOS_SLOTS))
        self.use_eos.fill_(bool(ids))
        self.min_new.fill_(min_new)
        self.pad.fill_(pad)
        self.out.fill_(pad)
        self.out[:, 0] = first
        self.token.copy_(first.view(-1, 1))
        self.position.copy_(positions)
        self.cache_position.fill_(cache_position)
        self.index.fill_(1)
        self.done.copy_(done)


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


def _make_step(model: Any, cache: Any, compile: bool, exact: bool, attention: str | None = None,
               greedy: bool = False) -> Any:
    """The decode step; with ``attention``, the model runs it with that attention implementation (switched around
    each call, so the prompt's pass keeps the model's own; a recorded graph holds the step's kernels).
    ``greedy``: the step takes a :class:`Picker`'s buffers (``Picker.args()``) and picks its token itself
    (:func:`_greedy`, placed as :data:`PICK` says)."""
    import torch

    from gemma_run.infer import decode_attention

    def step(input_ids: Any, position_ids: Any, cache_position: Any, attention_mask: Any) -> Any:
        out = model(input_ids=input_ids, position_ids=position_ids, cache_position=cache_position,
                    attention_mask=attention_mask, past_key_values=cache, use_cache=True, return_dict=True)
        return out.logits[:, -1, :].float()

    def compiled(fn: Callable[..., Any]) -> Callable[..., Any]:
        return torch.compile(fn, fullgraph=True, dynamic=False, options=compile_options(exact)) if compile else fn

    if not greedy:
        run = compiled(step)
    elif PICK == "with_step":
        run = compiled(_greedy(step, _pick_in_step))
    else:
        run = _greedy(compiled(step), compiled(_pick_in_step) if PICK == "compiled_apart" else _pick_in_step)
    if attention is None:
        return run
    configs = decode_attention.configs(model)  # found once: a step without a graph switches at every call

    def with_attention(*args: Any) -> Any:
        with decode_attention.implementation(configs, attention):
            return run(*args)

    return with_attention


ARGMAX_CHUNK = 2048  # logits per first-stage row of :func:`argmax`


def argmax(logits: Any) -> Any:
    """``logits.argmax(-1)`` for [B, V] logits, in two stages: the maximum and its index in each chunk of
    :data:`ARGMAX_CHUNK` (padded with -inf), then the first chunk holding the overall maximum. The same index,
    ties included (the first of equal maxima, as both stages take the first). Why: inductor compiles a one-row
    argmax into a single program, which took 68 us over Gemma's 262k logits on an H100 (an eager argmax: 9 us);
    the chunks' maxima run as one program per chunk."""
    import torch

    batch, vocab = logits.shape
    chunks = -(-vocab // ARGMAX_CHUNK)
    padded = torch.nn.functional.pad(logits, (0, chunks * ARGMAX_CHUNK - vocab), value=float("-inf"))
    values, within = padded.view(batch, chunks, ARGMAX_CHUNK).max(dim=-1)
    chunk = values.argmax(dim=-1)
    return chunk * ARGMAX_CHUNK + within.gather(-1, chunk[:, None]).squeeze(-1)


# Where a greedy step's pick runs, inside the one recorded graph either way: "with_step", compiled in one graph
# with the model's forward; "compiled_apart", the forward compiled as a sampling run's is and the pick compiled
# on its own; "eager", the pick as plain kernels after the compiled forward.
PICK = "with_step"


def _greedy(step: Callable[..., Any], pick: Callable[..., Any]) -> Callable[..., Any]:
    """``step`` (token, positions, cache position, mask -> logits [B, V]) followed by ``pick`` (logits and the
    :class:`Picker`'s buffers), as one function of the picker's buffers (``Picker.args()``)."""

    def pick_step(token: Any, position: Any, cache_position: Any, mask: Any, index: Any, min_new: Any, eos: Any,
                  use_eos: Any, pad: Any, done: Any, out: Any) -> Any:
        logits = step(token, position, cache_position, mask)
        return pick(logits, token, position, cache_position, index, min_new, eos, use_eos, pad, done, out)

    return pick_step


def _pick_in_step(logits: Any, token: Any, position: Any, cache_position: Any, index: Any, min_new: Any, eos: Any,
                  use_eos: Any, pad: Any, done: Any, out: Any) -> Any:
    """The argmax token of ``logits``, as the host loop's :func:`_pick` makes it (EOS held back while ``index`` <
    ``min_new``; ``pad`` for rows already done), written to ``out`` and ``token``; positions advanced by one."""
    import torch

    held = torch.where((index < min_new) & use_eos, float("-inf"), logits.index_select(-1, eos))
    nxt = argmax(logits.index_copy(-1, eos, held))  # EOS can't win before min_new (repeats: same value)
    nxt = torch.where(done, pad, nxt)
    out.index_copy_(1, index.clamp(max=out.shape[1] - 1).view(1), nxt.view(-1, 1))
    done.logical_or_(torch.isin(nxt, eos) & use_eos)
    token.copy_(nxt.view(-1, 1))
    position.add_(1)
    cache_position.add_(1)
    index.add_(1)
    return nxt


def compile_options(exact: bool) -> dict[str, Any]:
    """Inductor's options for the decode step, each measured on an H100 (random gemma3_4b, bf16, batch 1).
    No ``triton.cudagraphs``: the engine records the CUDA graph
    itself (:mod:`gemma_run.infer.graph`), which also serves the eager step and tensor-subclass weights.

    - ``coordinate_descent_tuning``: inductor tunes its own batch-1 matrix-vector kernels (fused with the norms
      around them) instead of calling cuBLAS: 5.06 -> 4.07 ms a step (51% -> 64% of the bandwidth limit), for a
      longer first compile (84 -> 160 s), which the compile cache then saves.
    - ``emulate_precision_casts``: bf16 rounded wherever eager rounds it, so the compiled step picks eager's
      greedy tokens (``generation.exact``).
    - ``combo_kernels``: independent kernels (the query's and key's norms and rotations, the key's and value's
      cache writes, ...) launched as one; the recorded step, with fused projections, went 3.808 -> 3.607 ms.
      Programmatic dependent launch (``triton.enable_pdl``) measured no gain (3.803).
    """
    return {"coordinate_descent_tuning": True, "emulate_precision_casts": exact, "combo_kernels": True}


def choose(logits: Any, kwargs: dict[str, Any], generator: Any = None) -> Any:
    """The next token of each row: greedy argmax, or a sample after temperature, top-k and top-p (the order
    generate() applies them in)."""
    import torch

    if not kwargs.get("do_sample"):
        return logits.argmax(dim=-1)
    logits = logits / max(float(kwargs["temperature"]), 1e-5)
    top_k = int(kwargs.get("top_k") or 0)
    if top_k > 0:
        kth = torch.topk(logits, min(top_k, logits.shape[-1]), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    top_p = float(kwargs.get("top_p") or 1.0)
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        probs = sorted_logits.softmax(dim=-1)
        drop = probs.cumsum(dim=-1) - probs > top_p  # the tokens after the nucleus is complete
        logits = logits.masked_fill(drop.scatter(1, order, drop), float("-inf"))
    return torch.multinomial(logits.softmax(dim=-1), 1, generator=generator).squeeze(-1)


def generate(model: Any, input_ids: Any, attention_mask: Any, kwargs: dict[str, Any], *, streamer: Any = None,
             compile: bool, exact: bool = True, graph: bool = False, attention: str | None = None,
             fuse: bool = False, pick: bool = True, stop: list[str] | None = None, tokenizer: Any = None) -> Any:
    """Tokens [B, prompt + new] as generate() returns them (rows that finished early padded), from generate()'s
    own ``kwargs`` (max_new_tokens, min_new_tokens, eos_token_id, pad_token_id and the sampling keys).

    ``input_ids``/``attention_mask`` are left-padded [B, P] on the model's device. ``streamer`` gets the prompt,
    then the new tokens as they are known (the first one at once: time to first token; then every few steps).
    A row ends at an EOS or, when ``stop`` strings are given, once its text holds one (checked every few steps).
    ``fuse``: first fuse the model's sibling projections (:func:`fuse_projections`). ``pick``: greedy runs pick
    each token inside the step (:class:`Picker`; not with more than :data:`EOS_SLOTS` EOS ids).
    """
    import torch

    if fuse:
        fuse_projections(model)
    batch, prompt = input_ids.shape
    new = int(kwargs["max_new_tokens"])
    min_new = int(kwargs.get("min_new_tokens") or 0)
    eos, pad = list(kwargs.get("eos_token_id") or []), int(kwargs["pad_token_id"])
    device = input_ids.device
    greedy = pick and not kwargs.get("do_sample") and len(eos) <= EOS_SLOTS
    s = session(model, batch, prompt + new, compile=compile, exact=exact, graph=graph and device.type == "cuda",
                attention=attention, greedy=greedy)
    with torch.inference_mode():  # the cache and mask are inference tensors once used: reset them as such
        s.cache.reset()
        if s.mask is None:
            s.mask = torch.ones(batch, s.length, dtype=torch.long, device=device)
        mask = s.mask
        mask.fill_(1)
        mask[:, :prompt] = attention_mask
        if greedy and s.picker is None:
            s.picker = Picker.make(batch, s.length, mask)
    positions = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
    real = attention_mask.long().sum(-1, keepdim=True)  # the position of each row's next token
    eos_t = torch.tensor(eos or [-1], device=device)
    suppress = eos_t[eos_t >= 0] if min_new and eos else None
    if streamer is not None:
        streamer.put(input_ids.cpu())
    with torch.inference_mode():
        logits = model(input_ids=input_ids, position_ids=positions, attention_mask=mask,
                       cache_position=torch.arange(prompt, device=device), past_key_values=s.cache,
                       use_cache=True, return_dict=True, **_last_only(model)).logits[:, -1, :].float()
        done = torch.zeros(batch, dtype=torch.bool, device=device)
        token = _pick(logits, kwargs, done, pad, suppress if min_new > 0 else None)
        done |= torch.isin(token, eos_t)
        if streamer is not None:
            streamer.put(token.cpu())
        if s.picker is not None:  # the step picks from here on, in the picker's buffers
            p = s.picker
            p.start(token, real, prompt, eos, min_new, pad, done)
            out, done, args = p.out[:, :new], p.done, p.args()
        else:
            out = torch.full((batch, new), pad, dtype=input_ids.dtype, device=device)
            out[:, 0] = token
            step_positions = real + torch.arange(new, device=device)  # [B, new]: each step's position ids
            cache_positions = torch.arange(prompt, prompt + new, device=device)
        streamed = 1
        look = Lookout(out, done)
        for i in range(1, new):
            if i % CHECK_EVERY == 0 and (seen := look.take(out, done, i)) is not None:
                tokens, finished, known = seen
                if stop:
                    hit = _stopped(tokens[:, :known], stop, tokenizer)
                    if bool(hit.any()):
                        finished |= hit
                        done |= look.to_device(hit)
                if bool(finished.all()):
                    break
                if streamer is not None and known > streamed:
                    streamer.put(tokens[0, streamed:known])
                    streamed = known
            first = s.steps_run == 0
            start = time.perf_counter() if first else 0.0
            if s.picker is None:
                args = (token.view(batch, 1), step_positions[:, i - 1:i], cache_positions[i - 1:i], mask)
            if first:
                logits = s.first_step(model, args, exact)
                _sync(device)
                s.compile_seconds = time.perf_counter() - start
                if s.compiled or s.graph:
                    log.info("%s the decode step for batch %d x %d positions in %.1f s",
                             " and ".join(w for w, on in (("compiled", s.compiled), ("recorded", s.graph)) if on),
                             batch, s.length, s.compile_seconds)
            else:
                logits = s.replay(*args) if s.replay is not None else s.step(*args)
            s.steps_run += 1
            if s.picker is None:
                token = _pick(logits, kwargs, done, pad, suppress if i < min_new else None)
                out[:, i] = token
                done |= torch.isin(token, eos_t)
        if streamer is not None and streamed < new:
            tail = out[0, streamed:]
            streamer.put(tail[: _length(tail, eos)].cpu())
    return torch.cat([input_ids, out], dim=1)


class Lookout:
    """What the loop knows of the tokens so far without waiting for the GPU.

    The loop runs ahead of the GPU (a replayed step costs the CPU ~0.8 ms, the GPU ~4 ms on a 4B), so any look
    that waits for the GPU, such as ``bool(done.all())`` or a streamer's ``.cpu()``, lets its queue of steps run
    dry and the next steps start late. On a GPU each :meth:`take` starts a copy of the tokens and the finished
    rows into pinned memory behind an event and returns the previous look's copy, which the GPU finished long
    ago: rows are seen finished, and tokens streamed, one look (``CHECK_EVERY`` steps) later, and the result is
    the same. Elsewhere (a CPU) it returns the current state, as a plain read would.
    """

    def __init__(self, out: Any, done: Any) -> None:
        import torch

        self.cuda = out.device.type == "cuda"
        self.device = out.device
        self.pending: int | None = None  # tokens known in the copy in flight
        if self.cuda:
            self.out = torch.empty(out.shape, dtype=out.dtype, pin_memory=True)
            self.done = torch.empty(done.shape, dtype=done.dtype, pin_memory=True)
            self.event = torch.cuda.Event()

    def take(self, out: Any, done: Any, known: int) -> tuple[Any, Any, int] | None:
        """(tokens [B, new] on the CPU, finished rows [B] on the CPU, how many tokens of each row are known),
        from the previous look on a GPU (None at the first), from now elsewhere."""
        if not self.cuda:
            return out.cpu(), done.cpu(), known
        seen = None
        if self.pending is not None:
            self.event.synchronize()
            seen = (self.out.clone(), self.done.clone(), self.pending)
        self.out.copy_(out, non_blocking=True)
        self.done.copy_(done, non_blocking=True)
        self.event.record()
        self.pending = known
        return seen

    def to_device(self, rows: Any) -> Any:
        """A CPU tensor on the loop's device, copied without waiting for the GPU's queue."""
        return rows.pin_memory().to(self.device, non_blocking=True) if self.cuda else rows.to(self.device)


def _first_line(e: BaseException) -> str:
    return str(e).splitlines()[0][:200] if str(e) else ""


def _last_only(model: Any) -> dict[str, Any]:
    """``logits_to_keep=1`` where the model takes it: the prompt's pass computes the last position's logits
    only (Gemma's 262k vocabulary would otherwise cost prompt x 262k floats)."""
    import inspect

    return {"logits_to_keep": 1} if "logits_to_keep" in inspect.signature(model.forward).parameters else {}


def _stopped(tokens: Any, stop: list[str], tokenizer: Any) -> Any:
    """Rows whose text so far holds a stop string (generate()'s stop_strings, checked on decoded text)."""
    import torch

    texts = tokenizer.batch_decode(tokens.tolist(), skip_special_tokens=True)
    return torch.tensor([any(s in t for s in stop) for t in texts], device=tokens.device)


def _pick(logits: Any, kwargs: dict[str, Any], done: Any, pad: int, suppress: Any) -> Any:
    """The next tokens; ``suppress`` (the EOS ids while min_new_tokens is not reached, as in generate()) cannot
    win, and finished rows get ``pad``. ``logits`` is the step's own output, which the next step overwrites (a
    recorded graph's buffer): it is changed in place, as is the fresh token tensor (fewer kernels a token)."""
    if suppress is not None:
        logits.index_fill_(-1, suppress, float("-inf"))
    return choose(logits, kwargs).masked_fill_(done, pad)


def _length(tokens: Any, eos: list[int]) -> int:
    values = tokens.tolist()
    for pos, t in enumerate(values):
        if t in eos:
            return pos + 1
    return len(values)


def _sync(device: Any) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)
