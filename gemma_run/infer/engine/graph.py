"""A decode step recorded once as a CUDA graph and replayed per token.

A batch-1 decode step is a thousand small kernels; launched one by one from Python, their launches take longer than
the GPU needs to read the weights, whatever the model's size, so the GPU waits on the CPU. A CUDA graph launches
them all in one call. Recording the graph ourselves, rather than through inductor's ``triton.cudagraphs``, serves
three cases with one mechanism:

- the compiled step (inductor's kernels, fused and tuned);
- the eager step (no compile at all: a first token after seconds instead of minutes);
- weights held in tensor subclasses (torchao's int4), for which inductor declines its own CUDA graphs, which would
  leave that step launch-bound.

What makes a decode step recordable is that everything it touches lives at fixed addresses: the static KV cache
(reset in place between prompts), the attention mask buffer of the session, and the step's inputs, which are
copied into the buffers the graph was recorded with. transformers' mask code reads no tensor value while a stream
captures (``is_tracing`` covers stream capture), so the eager forward records as it runs.

Recording needs a warmed-up step (cuBLAS workspaces, lazily made buffers, compiled code), and recording runs
nothing. Both are done with the real arguments of the current step: a decode step writes its token's keys and
values into the cache at its position and reads the rest, so running it again gives the same cache and logits
once the cache's own position is put back. (transformers >= 5 keeps that position on the device, in each static
layer's ``cumulative_length``, advanced in place by every run: ``rewind`` restores it before each extra run.)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

WARMUP = 2  # runs of the step on a side stream before recording (the PyTorch CUDA-graph recipe)


class Replay:
    """``step(*args)`` recorded once; calling it copies the new arguments into the recorded inputs and replays.

    ``shared``: positions of arguments that are the same tensor on every call (a session's mask buffer): the graph
    reads them in place, and passing another tensor there is an error rather than a silent stale read.
    The returned tensor is the graph's own output buffer, overwritten by the next replay.
    """

    def __init__(self, step: Any, args: tuple[Any, ...], shared: tuple[int, ...] = (),
                 rewind: Callable[[], None] = lambda: None) -> None:
        """``rewind``: puts the state the step advances back to where it was before this step's first run (which
        the caller made); called before each warm-up run and before recording, so the first replay is this step."""
        import torch

        self.shared = set(shared)
        self.inputs = tuple(a if i in self.shared else a.clone() for i, a in enumerate(args))
        current = torch.cuda.current_stream()
        side = torch.cuda.Stream()
        side.wait_stream(current)
        with torch.cuda.stream(side):
            for _ in range(WARMUP):
                rewind()
                step(*self.inputs)
            rewind()
        current.wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.output = step(*self.inputs)

    def __call__(self, *args: Any) -> Any:
        for i, (recorded, given) in enumerate(zip(self.inputs, args, strict=True)):
            if i in self.shared:
                if given is not recorded:
                    raise ValueError(f"argument {i} of a recorded step must be the tensor it was recorded with")
            elif given is not recorded:
                recorded.copy_(given)
        self.graph.replay()
        return self.output
