"""What the decode loop looks at between steps, every :data:`CHECK_EVERY` steps: which rows have ended (an EOS or
a stop string), and which new tokens to stream, without making the CPU wait for the GPU (:class:`Lookout`)."""

from __future__ import annotations

from typing import Any

CHECK_EVERY = 8  # steps between looks at which rows have finished (each look reads the GPU's tokens)


class Lookout:
    """What the loop knows of the tokens so far without waiting for the GPU.

    The loop runs ahead of the GPU (a replayed step costs the CPU a fraction of what it costs the GPU), so any
    look that waits for the GPU, such as ``bool(done.all())`` or a streamer's ``.cpu()``, lets its queue of steps
    run dry and the next steps start late. On a GPU each :meth:`take` starts a copy of the tokens and the finished
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


class Watch:
    """The loop's looks at the new tokens and the rows that ended (:meth:`follow`): :meth:`ended` between steps,
    :meth:`close` at the end, streaming row 0's tokens to ``streamer`` as they are known and ending rows whose
    text holds one of the ``stop`` strings."""

    def __init__(self, *, eos: list[int], streamer: Any = None, stop: list[str] | None = None,
                 tokenizer: Any = None) -> None:
        self.eos, self.streamer, self.stop, self.tokenizer = eos, streamer, stop, tokenizer
        self.streamed = 1

    def follow(self, out: Any, done: Any) -> None:
        """Look at ``out`` [B, new] (the new tokens, the first one known) and ``done`` [B] (rows ended; rows
        stopped by a stop string are marked in it, in place)."""
        self.out, self.done = out, done
        self.look = Lookout(out, done)

    def ended(self, step: int) -> bool:
        """Whether every row has ended, as seen before ``step`` (looked at every CHECK_EVERY steps)."""
        if step % CHECK_EVERY or (seen := self.look.take(self.out, self.done, step)) is None:
            return False
        tokens, finished, known = seen
        if self.stop:
            hit = _stopped(tokens[:, :known], self.stop, self.tokenizer)
            if bool(hit.any()):
                finished |= hit
                self.done |= self.look.to_device(hit)
        if bool(finished.all()):
            return True
        if self.streamer is not None and known > self.streamed:
            self.streamer.put(tokens[0, self.streamed:known])
            self.streamed = known
        return False

    def close(self) -> None:
        """Stream row 0's tokens not streamed yet, up to its EOS."""
        if self.streamer is not None and self.streamed < self.out.shape[1]:
            tail = self.out[0, self.streamed:]
            self.streamer.put(tail[: _length(tail, self.eos)].cpu())


def _stopped(tokens: Any, stop: list[str], tokenizer: Any) -> Any:
    """Rows whose text so far holds a stop string (generate()'s stop_strings, checked on decoded text)."""
    import torch

    texts = tokenizer.batch_decode(tokens.tolist(), skip_special_tokens=True)
    return torch.tensor([any(s in t for s in stop) for t in texts], device=tokens.device)


def _length(tokens: Any, eos: list[int]) -> int:
    values = tokens.tolist()
    for pos, t in enumerate(values):
        if t in eos:
            return pos + 1
    return len(values)
