"""Picking the next token: on the device, inside a greedy step (:class:`Picker`, :func:`pick_in_step`), or on the
host after the step (:class:`HostPick`: greedy, or temperature / top-k / top-p sampling as generate() does it).
Both hold EOS back while fewer than ``min_new_tokens`` tokens are made and pad rows that already ended."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

EOS_SLOTS = 8  # EOS ids a greedy step can know on the device; a run with more picks its tokens on the host
ARGMAX_CHUNK = 2048  # logits per first-stage row of :func:`argmax`


@dataclass
class Picker:
    """The device state of a greedy decode step, which picks its own next token (:func:`pick_in_step`).

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


def greedy_step(step: Callable[..., Any], pick: Callable[..., Any]) -> Callable[..., Any]:
    """``step`` (token, positions, cache position, mask -> logits [B, V]) followed by ``pick`` (logits and the
    :class:`Picker`'s buffers), as one function of the picker's buffers (``Picker.args()``)."""

    def pick_step(token: Any, position: Any, cache_position: Any, mask: Any, index: Any, min_new: Any, eos: Any,
                  use_eos: Any, pad: Any, done: Any, out: Any) -> Any:
        logits = step(token, position, cache_position, mask)
        return pick(logits, token, position, cache_position, index, min_new, eos, use_eos, pad, done, out)

    return pick_step


def pick_in_step(logits: Any, token: Any, position: Any, cache_position: Any, index: Any, min_new: Any, eos: Any,
                 use_eos: Any, pad: Any, done: Any, out: Any) -> Any:
    """The argmax token of ``logits``, as :class:`HostPick` makes it (EOS held back while ``index`` < ``min_new``;
    ``pad`` for rows already done), written to ``out`` and ``token``; positions advanced by one."""
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


def argmax(logits: Any) -> Any:
    """``logits.argmax(-1)`` for [B, V] logits, in two stages: the maximum and its index in each chunk of
    :data:`ARGMAX_CHUNK` (padded with -inf), then the first chunk holding the overall maximum. The same index,
    ties included (the first of equal maxima, as both stages take the first). Why: inductor compiles a one-row
    argmax into a single program that walks the whole vocabulary alone, slower than an eager argmax over
    Gemma's 262k logits; the chunks' maxima run as one program per chunk, in parallel."""
    import torch

    batch, vocab = logits.shape
    chunks = -(-vocab // ARGMAX_CHUNK)
    padded = torch.nn.functional.pad(logits, (0, chunks * ARGMAX_CHUNK - vocab), value=float("-inf"))
    values, within = padded.view(batch, chunks, ARGMAX_CHUNK).max(dim=-1)
    chunk = values.argmax(dim=-1)
    return chunk * ARGMAX_CHUNK + within.gather(-1, chunk[:, None]).squeeze(-1)


@dataclass(frozen=True)
class HostPick:
    """The loop's own pick after a step, from generate()'s ``kwargs`` (the sampling keys, min_new_tokens,
    eos_token_id, pad_token_id); also the rules the device-side pick gets (:meth:`Picker.start`)."""

    kwargs: dict[str, Any]
    eos: list[int]
    eos_ids: Any  # [E] long on the device (-1 alone when there is none)
    pad: int
    min_new: int
    suppress: Any  # the EOS ids held back under min_new (None: nothing to hold back)

    @classmethod
    def of(cls, kwargs: dict[str, Any], device: Any) -> HostPick:
        import torch

        eos, min_new = list(kwargs.get("eos_token_id") or []), int(kwargs.get("min_new_tokens") or 0)
        eos_ids = torch.tensor(eos or [-1], device=device)
        suppress = eos_ids[eos_ids >= 0] if min_new and eos else None
        return cls(kwargs, eos, eos_ids, int(kwargs["pad_token_id"]), min_new, suppress)

    def pick(self, logits: Any, done: Any, index: int) -> Any:
        """The tokens of new-token ``index``: EOS cannot win while ``index`` < min_new_tokens (as in
        generate()), and finished rows get ``pad``. ``logits`` is the step's own output, which the next step
        overwrites (a recorded graph's buffer): it is changed in place, as is the fresh token tensor (fewer
        kernels a token)."""
        if self.suppress is not None and index < self.min_new:
            logits.index_fill_(-1, self.suppress, float("-inf"))
        return choose(logits, self.kwargs).masked_fill_(done, self.pad)

    def ended(self, token: Any) -> Any:
        """Rows whose ``token`` [B] is an EOS."""
        import torch

        return torch.isin(token, self.eos_ids)


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
