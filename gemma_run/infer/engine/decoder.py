"""The fast engine's state for one model: its sessions by :class:`SessionKey`, its fused projections and its
NF4 linears under gemma-run's 4-bit kernel.

One :class:`Decoder` per model (:meth:`Decoder.of`), kept on the model so that it lives as long as the weights its
recorded steps read: a session made for one prompt serves every later prompt of its shape. Fusing or unfusing the
projections, or packing the 4-bit linears, changes those weights, so it drops the sessions.
"""

from __future__ import annotations

import logging
from typing import Any

from gemma_run.infer.engine import fused_projections
from gemma_run.infer.engine.options import EngineOptions
from gemma_run.infer.engine.session import Session, SessionKey, static_length

log = logging.getLogger(__name__)

ATTRIBUTE = "_gemma_run_decoder"  # where a model keeps its decoder (in its __dict__: not a submodule)


class Decoder:
    """The sessions of one model (``sessions``: :class:`SessionKey` -> :class:`Session`)."""

    def __init__(self, model: Any) -> None:
        self.model = model
        self.sessions: dict[SessionKey, Session] = {}

    @classmethod
    def of(cls, model: Any) -> Decoder:
        """The model's decoder, made on first use."""
        decoder = model.__dict__.get(ATTRIBUTE)
        if decoder is None:
            decoder = model.__dict__[ATTRIBUTE] = cls(model)
        return decoder

    def key(self, batch: int, needed: int, options: EngineOptions, *, cuda: bool, greedy: bool) -> SessionKey:
        """The key of the session for ``batch`` rows of up to ``needed`` positions run as ``options`` (a CUDA
        graph only on a CUDA device)."""
        config = self.model.config
        text = getattr(config, "get_text_config", lambda: config)()
        length = static_length(needed, getattr(text, "max_position_embeddings", None))
        placement = options.pick_placement if greedy else SessionKey.pick_placement  # no pick: no placement
        scope = options.compile_scope if options.compile else SessionKey.compile_scope
        return SessionKey(batch, length, options.compile, options.exact, options.graph and cuda, options.attention,
                          greedy, placement, scope)

    def session(self, key: SessionKey) -> Session:
        """The session of ``key``, made on first use. ``key.greedy``: its step picks the next token itself (its
        Picker's buffers are made by the first run)."""
        if key not in self.sessions:
            self.sessions[key] = Session.make(self.model, key)
        return self.sessions[key]

    def find(self, **fields: Any) -> list[Session]:
        """The sessions whose key has these field values, e.g. ``find(compile=True, greedy=True)``."""
        return [s for key, s in self.sessions.items() if all(getattr(key, k) == v for k, v in fields.items())]

    def clear(self) -> None:
        """Drop every session (their recorded steps read weights about to change)."""
        self.sessions.clear()

    def fuse(self) -> int:
        """Fuse the model's q/k/v and gate/up projections (:mod:`gemma_run.infer.engine.fused_projections`),
        once; returns the number of fused groups. Sessions made before are dropped."""
        if fused_projections.MARK in self.model.__dict__:
            return fused_projections.count(self.model)
        from gemma_run.patches import registry

        self.clear()
        count = registry.apply_one("model.fused_projections", model=self.model).value
        log.info("fused %d groups of projections (q/k/v, gate/up) for the decode step", count)
        return count

    def pack_4bit(self) -> int:
        """Put quant=4bit's NF4 linears under gemma-run's 4-bit kernel
        (:mod:`gemma_run.infer.engine.packed_4bit`), once, before fusing; returns how many."""
        from gemma_run.infer.engine import packed_4bit

        if packed_4bit.MARK in self.model.__dict__:
            return packed_4bit.count(self.model)
        from gemma_run.patches import registry

        self.unfuse()  # fused projections stack the linears as they are: pack first
        self.clear()
        return registry.apply_one("model.packed_4bit", model=self.model).value

    def restore(self) -> None:
        """The model's own modules back (:meth:`unfuse`, then the bitsandbytes linears), e.g. to train it next."""
        from gemma_run.infer.engine import packed_4bit

        self.unfuse()
        if packed_4bit.MARK in self.model.__dict__:
            self.clear()
            packed_4bit.unpack(self.model)

    def unfuse(self) -> int:
        """Undo :meth:`fuse` (the model's own linears back, e.g. to train it next); its sessions go too."""
        if fused_projections.MARK not in self.model.__dict__:
            return 0
        self.clear()
        return fused_projections.unfuse(self.model)

    def report(self) -> list[dict[str, Any]]:
        """What each session ran as: its shape, whether its step ended up compiled and replayed as a CUDA graph
        (either can have fallen back, with a warning) and picked its own tokens, with the first step's seconds."""
        return [{"batch": s.batch, "length": s.length, "compiled": s.compiled, "cuda_graph": s.replay is not None,
                 "step_attention": s.key.attention or "model", "device_pick": s.picker is not None,
                 "first_step_seconds": None if s.compile_seconds is None else round(s.compile_seconds, 2)}
                for s in self.sessions.values()]
