"""Timing and memory of generation: time to first token, tokens/s, peak memory per device."""

from __future__ import annotations

import resource
import sys
import time
from typing import Any


class TimingStreamer:
    """A generate() streamer that records when the first new token arrived, and passes tokens on to
    ``inner`` (a TextStreamer printing them) when given. generate() first puts the prompt, then each step."""

    def __init__(self, inner: Any = None) -> None:
        self.inner = inner
        self.start = time.perf_counter()
        self.first_token_at: float | None = None
        self._prompt_seen = False

    def put(self, value: Any) -> None:
        if self._prompt_seen and self.first_token_at is None:
            self.first_token_at = time.perf_counter()
        self._prompt_seen = True
        if self.inner is not None:
            self.inner.put(value)

    def end(self) -> None:
        if self.inner is not None:
            self.inner.end()

    @property
    def ttft(self) -> float | None:
        return None if self.first_token_at is None else self.first_token_at - self.start


def reset_peak_memory() -> None:
    import torch

    for i in range(torch.cuda.device_count()):
        torch.cuda.reset_peak_memory_stats(i)


def peak_memory() -> dict[str, int]:
    """Peak bytes per device: allocated by torch on each GPU; the process's peak resident size for "cpu"."""
    import torch

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    out = {"cpu": int(rss if sys.platform == "darwin" else rss * 1024)}  # Linux reports KiB, macOS bytes
    for i in range(torch.cuda.device_count()):
        out[f"cuda:{i}"] = int(torch.cuda.max_memory_allocated(i))
    return out


class Totals:
    """Sums over the batches of a run."""

    def __init__(self) -> None:
        self.new_tokens = 0
        self.prompt_tokens = 0
        self.seconds = 0.0
        self.ttfts: list[float] = []

    def add(self, new_tokens: int, prompt_tokens: int, seconds: float, ttft: float | None) -> None:
        self.new_tokens += new_tokens
        self.prompt_tokens += prompt_tokens
        self.seconds += seconds
        if ttft is not None:
            self.ttfts.append(ttft)

    def summary(self) -> dict[str, Any]:
        return {
            "new_tokens": self.new_tokens,
            "prompt_tokens": self.prompt_tokens,
            "generate_seconds": round(self.seconds, 3),
            "tokens_per_second": round(self.new_tokens / self.seconds, 2) if self.seconds > 0 else None,
            "time_to_first_token_s": round(sum(self.ttfts) / len(self.ttfts), 4) if self.ttfts else None,
        }
