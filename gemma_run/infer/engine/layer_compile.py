"""``generation.compile_scope=layers``: the decode step's decoder layers compiled, one graph per kind of layer.

Compiling the whole step traces every layer into one graph, so a deeper model compiles longer. Compiling each
layer as it stands does not share anything either: a layer indexes the static cache's Python list of layers by
its own ``layer_idx``, which dynamo specializes, so each layer would get its own graph. Here every layer runs
through one compiled function that takes the layer as an argument (its weights are graph inputs) and a view of
the cache holding only that layer's slice (:class:`LayerCache`): layers that run the same code share the same
graph. Gemma 3 compiles one graph for all its layers; Gemma 4 one per kind (sliding or global, with its own KV or
another layer's). The layers switch to the compiled call only while the step runs (``Module.__call__`` uses
``_compiled_call_impl`` when set, as ``Module.compile`` sets it), so the prompt's pass and generate() keep the
plain layers.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator
from typing import Any

from gemma_run.app.errors import GemmaRunError


class LayerCache:
    """One decoder layer's slice of a static cache: ``update`` writes that slice whatever index the layer gives."""

    def __init__(self, layer: Any) -> None:
        self.layer = layer

    def update(self, key_states: Any, value_states: Any, layer_idx: int, *args: Any, **kwargs: Any) -> Any:
        return self.layer.update(key_states, value_states, *args, **kwargs)


def _run_layer(layer: Any, *args: Any, **kwargs: Any) -> Any:
    return layer._call_impl(*args, **kwargs)


def compiled_layers(model: Any, cache: Any, options: dict[str, Any]) -> Callable[[], contextlib.AbstractContextManager]:
    """A context in which ``model``'s decoder layers run through one compiled function, each on its slice of
    ``cache`` (its layers in the decoder's order)."""
    import torch

    from gemma_run.patches import registry

    try:
        layers = list(model.get_decoder().layers)
    except (AttributeError, ValueError, TypeError) as e:
        raise GemmaRunError(f"{type(model).__name__} has no decoder layers to compile one by one ({e})",
                            key="generation.compile_scope", fix="generation.compile_scope=step") from e
    if len(cache.layers) != len(layers):
        raise GemmaRunError(f"{type(model).__name__}: {len(layers)} decoder layers for {len(cache.layers)} cache "
                            "layers", key="generation.compile_scope", fix="generation.compile_scope=step")
    registry.apply_one("torch._dynamo.recompile_limit")  # kinds of layer x session shapes can pass 8 graphs
    compiled = torch.compile(_run_layer, dynamic=False, options=options)
    views = [LayerCache(slice_) for slice_ in cache.layers]

    def call(index: int, *args: Any, **kwargs: Any) -> Any:
        if kwargs.get("past_key_values") is not None:
            kwargs["past_key_values"] = views[index]
        return compiled(layers[index], *args, **kwargs)

    entries = [functools.partial(call, i) for i in range(len(layers))]

    @contextlib.contextmanager
    def layers_compiled() -> Iterator[None]:
        before = [layer._compiled_call_impl for layer in layers]
        for layer, entry in zip(layers, entries, strict=True):
            layer._compiled_call_impl = entry
        try:
            yield
        finally:
            for layer, call_impl in zip(layers, before, strict=True):
                layer._compiled_call_impl = call_impl

    return layers_compiled
