"""The decode loop, top-down: :func:`prefill` (the prompt's pass), then :func:`decode_on_device` (a greedy step
that picks its own tokens: the loop only replays it) or :func:`decode_on_host` (the loop picks after each step),
both under :func:`generate`."""

from __future__ import annotations

from typing import Any, NamedTuple

from gemma_run.infer.engine.decoder import Decoder
from gemma_run.infer.engine.options import EngineOptions
from gemma_run.infer.engine.sampling import EOS_SLOTS, HostPick
from gemma_run.infer.engine.session import Session
from gemma_run.infer.engine.watch import Watch


class First(NamedTuple):
    """Where decoding stands after the prompt's pass."""

    token: Any  # [B] the first new token of each row
    done: Any  # [B] bool: rows that token ended
    position: Any  # [B, 1] each row's next position id
    cache_position: int  # the next slot of the cache (the prompt's width)


def prefill(model: Any, s: Session, input_ids: Any, attention_mask: Any, rules: HostPick) -> First:
    """The prompt's eager pass (compute-bound; it fills the cache at the fixed addresses the recorded step reads)
    and its pick of each row's first new token."""
    import torch

    prompt, device = input_ids.shape[1], input_ids.device
    positions = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
    logits = model(input_ids=input_ids, position_ids=positions, attention_mask=s.mask,
                   cache_position=torch.arange(prompt, device=device), past_key_values=s.cache,
                   use_cache=True, return_dict=True, **_last_only(model)).logits[:, -1, :].float()
    done = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=device)
    token = rules.pick(logits, done, 0)
    done |= rules.ended(token)
    return First(token, done, attention_mask.long().sum(-1, keepdim=True), prompt)


def decode_on_device(model: Any, s: Session, first: First, new: int, rules: HostPick, watch: Watch) -> Any:
    """New tokens [B, new] from a greedy session, whose step picks each token in its Picker's buffers."""
    p = s.picker
    p.start(first.token, first.position, first.cache_position, rules.eos, rules.min_new, rules.pad, first.done)
    out, args = p.out[:, :new], p.args()
    watch.follow(out, p.done)
    for i in range(1, new):
        if watch.ended(i):
            break
        s.decode(model, args)
    return out


def decode_on_host(model: Any, s: Session, first: First, new: int, rules: HostPick, watch: Watch) -> Any:
    """New tokens [B, new], the loop picking each one after the step (sampling, or greedy with the pick on the
    host)."""
    import torch

    token, done, device = first.token, first.done, first.token.device
    out = torch.full((token.shape[0], new), rules.pad, dtype=token.dtype, device=device)
    out[:, 0] = token
    positions = first.position + torch.arange(new, device=device)  # [B, new]: each step's position ids
    cache_positions = torch.arange(first.cache_position, first.cache_position + new, device=device)
    watch.follow(out, done)
    for i in range(1, new):
        if watch.ended(i):
            break
        args = (token.view(-1, 1), positions[:, i - 1:i], cache_positions[i - 1:i], s.mask)
        token = rules.pick(s.decode(model, args), done, i)
        out[:, i] = token
        done |= rules.ended(token)
    return out


def generate(model: Any, input_ids: Any, attention_mask: Any, kwargs: dict[str, Any], options: EngineOptions, *,
             streamer: Any = None, stop: list[str] | None = None, tokenizer: Any = None) -> Any:
    """Tokens [B, prompt + new] as generate() returns them (rows that finished early padded), from generate()'s
    own ``kwargs`` (max_new_tokens, min_new_tokens, eos_token_id, pad_token_id and the sampling keys), the step
    run as ``options`` says.

    ``input_ids``/``attention_mask`` are left-padded [B, P] on the model's device. ``streamer`` gets the prompt,
    then the new tokens as they are known (the first one at once: time to first token; then every few steps).
    A row ends at an EOS or, when ``stop`` strings are given, once its text holds one (checked every few steps).
    Greedy runs pick each token inside the step (``options.pick``; not with more than EOS_SLOTS EOS ids).
    """
    import torch

    decoder = Decoder.of(model)
    if options.kernel_4bit == "gemv4":
        decoder.pack_4bit()
    if options.fuse:
        decoder.fuse()
    batch, prompt = input_ids.shape
    new = int(kwargs["max_new_tokens"])
    greedy = options.pick and not kwargs.get("do_sample") and len(kwargs.get("eos_token_id") or []) <= EOS_SLOTS
    s = decoder.session(decoder.key(batch, prompt + new, options, cuda=input_ids.device.type == "cuda",
                                    greedy=greedy))
    with torch.inference_mode():  # the cache and mask are inference tensors once used: reset them as such
        s.start(attention_mask)
        rules = HostPick.of(kwargs, input_ids.device)
        if streamer is not None:
            streamer.put(input_ids.cpu())
        first = prefill(model, s, input_ids, attention_mask, rules)
        if streamer is not None:
            streamer.put(first.token.cpu())
        watch = Watch(eos=rules.eos, streamer=streamer, stop=stop, tokenizer=tokenizer)
        decode = decode_on_device if s.picker is not None else decode_on_host
        out = decode(model, s, first, new, rules, watch)
        watch.close()
    return torch.cat([input_ids, out], dim=1)


def _last_only(model: Any) -> dict[str, Any]:
    """``logits_to_keep=1`` where the model takes it: the prompt's pass computes the last position's logits
    only (Gemma's 262k vocabulary would otherwise cost prompt x 262k floats)."""
    import inspect

    return {"logits_to_keep": 1} if "logits_to_keep" in inspect.signature(model.forward).parameters else {}
