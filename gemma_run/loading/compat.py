"""Differences between the transformers versions gemma-run supports (4.53 .. 5.x), in one place."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache


@cache
def dtype_kwarg() -> str:
    """The name of from_pretrained/from_config's dtype argument: ``dtype`` from transformers 4.56 (5.x still
    accepts ``torch_dtype`` with a deprecation warning), ``torch_dtype`` before. transformers 4.53 (the oldest
    supported) passes an unknown ``dtype=`` on to the model's __init__: ``TypeError: Gemma3ForCausalLM.__init__()
    got an unexpected keyword argument 'dtype'``."""
    import transformers
    from packaging.version import Version

    return "dtype" if Version(Version(transformers.__version__).base_version) >= Version("4.56") else "torch_dtype"


@cache
def loads_state_dict_lazily() -> bool:
    """Whether from_pretrained(state_dict=...) reads each value only when it converts it (``value[...]``, as it
    reads a safetensors slice), quantizing tensor by tensor: transformers 5.x
    (``convert_and_load_state_dict_in_model``). 4.x reads shapes and dtypes of the whole dict first, so its values
    must be tensors."""
    import transformers
    from packaging.version import Version

    return Version(Version(transformers.__version__).base_version) >= Version("5.0")


def keys_to_not_convert(model) -> list[str]:
    """The modules bitsandbytes leaves unquantized by default (lm_head, tied outputs). The function moved from
    transformers.integrations.bitsandbytes (4.x) to transformers.quantizers.base (5.x)."""
    try:
        from transformers.quantizers.base import get_keys_to_not_convert
    except ImportError:  # transformers 4.x
        from transformers.integrations.bitsandbytes import get_keys_to_not_convert
    return list(get_keys_to_not_convert(model))


def should_convert_module(full_name: str, patterns: list[str] | None) -> bool:
    """Whether bitsandbytes replaces the Linear ``full_name`` given the skip ``patterns`` (5.x has a function
    for it; 4.x inlines the rule in _replace_with_bnb_linear, reproduced here)."""
    try:
        from transformers.quantizers.quantizers_utils import should_convert_module as convert
    except ImportError:  # transformers 4.x: a leaf name in the list, or a listed prefix of the full name
        if not patterns:
            return True
        leaf = full_name.rsplit(".", 1)[-1]
        return leaf not in patterns and not any(key + "." in full_name or key == full_name for key in patterns)
    return convert(full_name, patterns)


@contextmanager
def without_zero3_init() -> Iterator[None]:
    """A block in which transformers builds models as plain modules even while a ZeRO-3 config is active.

    ``TrainingArguments(deepspeed=<stage 3>)`` registers a process-wide DeepSpeed config; from then on every
    ``from_config`` partitions the new model's weights with ``deepspeed.zero.Init`` and initialises them by
    gathering them. A meta-device skeleton (module names and shapes, for checks and plans) has no data to
    gather: ``NotImplementedError: Cannot copy out of meta tensor; no data!``. Inside this block the registered
    config is hidden, and restored on exit.
    """
    try:
        from transformers.integrations import deepspeed as hf_deepspeed
    except ImportError:  # transformers without the DeepSpeed integration: nothing is registered
        yield
        return
    saved = getattr(hf_deepspeed, "_hf_deepspeed_config_weak_ref", None)
    hf_deepspeed._hf_deepspeed_config_weak_ref = None
    try:
        yield
    finally:
        hf_deepspeed._hf_deepspeed_config_weak_ref = saved
