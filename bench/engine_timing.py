"""What the fast-engine bench scripts time (bench/engine_profile.py, head_ab.py, pick_ab.py), in one place.

- :func:`generate`: one ``fast.generate`` of exactly ``NEW`` greedy tokens at batch 1, compiled and recorded as
  the engine runs in ``task=bench``: its seconds, and the decode rate after the first token (as ``task=bench``
  computes it, from :class:`gemma_run.infer.stats.TimingStreamer`);
- :func:`replay_ms`: the model's recorded step alone, replayed back to back (``fast.Session.replay_alone``).
"""

from __future__ import annotations

import time
from typing import Any

import torch

from gemma_run.infer import fast
from gemma_run.infer.stats import TimingStreamer

NEW = 128  # new tokens a run generates (and replays timed)
KWARGS = {"max_new_tokens": NEW, "min_new_tokens": NEW, "do_sample": False, "eos_token_id": [1], "pad_token_id": 0}


def generate(model: Any, ids: Any, mask: Any, **engine: Any) -> tuple[float, float]:
    """(seconds, decode tok/s after the first token) of one compiled, recorded ``fast.generate``; ``engine``: its
    other keywords (attention, fuse, pick)."""
    streamer = TimingStreamer()
    torch.cuda.synchronize()
    start = streamer.start = time.perf_counter()
    with torch.inference_mode():
        fast.generate(model, ids, mask, KWARGS, compile=True, exact=True, graph=True, streamer=streamer, **engine)
    torch.cuda.synchronize()
    end = time.perf_counter()
    return end - start, (NEW - 1) / (end - streamer.first_token_at)


def replay_ms(model: Any) -> float:
    """Milliseconds per replay of the model's one recorded step, ``NEW`` replays back to back."""
    [s] = [s for s in model._gemma_run_sessions.values() if s.replay is not None]
    torch.cuda.synchronize()
    start = time.perf_counter()
    with torch.inference_mode():
        s.replay_alone(NEW)
    torch.cuda.synchronize()
    return (time.perf_counter() - start) / NEW * 1e3
