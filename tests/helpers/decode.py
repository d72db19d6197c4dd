"""Generation helpers the fast-engine tests share (CPU and GPU): a prompt past the sliding window, a batch
through an engine, and the streaming / early-stop checks."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from gemma_run.infer.engine import EngineOptions

LONG = "the cat sat on the mat and looked at the dog " * 3  # > 16 tokens: past the tiny model's sliding window


def generate_tokens(loaded, prompts: list[str], engine: EngineOptions, new: int = 32, **extra):
    """``prompts`` through generate_batch on the CPU with ``engine``; returns its outputs, row by row."""
    import torch

    from gemma_run import compose
    from gemma_run.infer import generate as gen
    from gemma_run.infer.stats import TimingStreamer

    tok = loaded.tokenizer
    stop = list(extra.pop("stop", []))
    g = compose([f"generation.max_new_tokens={new}"]).generation
    kwargs = {**gen.generation_kwargs(g, loaded.model, tok, chat=False, engine=engine), **extra}
    ids = [tok(p)["input_ids"] for p in prompts]
    outs, _ = gen.generate_batch(loaded.model, tok, ids, device=torch.device("cpu"), kwargs=kwargs,
                                 stop=stop, streamer=TimingStreamer(), engine=engine)
    return outs


def eos_from(rows: list[list[int]], min_new: int, start: int) -> int:
    """An EOS id for a stopping test, taken from greedy rows made without one: a token row 0 first makes at step
    ``start`` or later, which no row makes before ``min_new`` (so holding EOS back changes nothing before it)."""
    early = {t for row in rows for t in row[:min_new]}
    return next(rows[0][i] for i in range(start, len(rows[0]))
                if rows[0][i] not in rows[0][:i] and rows[0][i] not in early)


def check_greedy_and_stopping(loaded, engine: EngineOptions) -> None:
    """A left-padded batch of two (one prompt past the sliding window), greedy: ``engine`` gives generate()'s
    tokens for 32 steps, and stops as generate() does at an EOS row 0 makes mid-run, with min_new_tokens (4)
    below max_new_tokens (32)."""
    import torch

    from gemma_run.infer.engine import HF

    prompts = [LONG, "hello there"]
    assert len(loaded.tokenizer(LONG)["input_ids"]) > 16
    ref = generate_tokens(loaded, prompts, HF, min_new_tokens=32)
    fast = generate_tokens(loaded, prompts, engine, min_new_tokens=32)
    assert [o.new_tokens for o in fast] == [32, 32]
    assert [o.completion for o in fast] == [o.completion for o in ref]
    tok = loaded.tokenizer
    batch = tok(prompts, return_tensors="pt", padding=True)
    with torch.inference_mode():
        plain = loaded.model.generate(**batch, max_new_tokens=32, min_new_tokens=32, do_sample=False,
                                      pad_token_id=tok.pad_token_id)[:, batch["input_ids"].shape[1]:].tolist()
    eos = eos_from(plain, 4, 8)
    ref = generate_tokens(loaded, prompts, HF, min_new_tokens=4, eos_token_id=[eos])
    fast = generate_tokens(loaded, prompts, engine, min_new_tokens=4, eos_token_id=[eos])
    assert (ref[0].stopped_by, ref[0].new_tokens) == ("eos", plain[0].index(eos) + 1)
    assert [(o.new_tokens, o.stopped_by, o.completion) for o in fast] == [
        (o.new_tokens, o.stopped_by, o.completion) for o in ref]


def check_streaming(loaded, graph: bool) -> None:
    """The streaming and early-stop checks on ``loaded``'s device (a GPU looks one look later: watch.Lookout)."""
    import torch

    from gemma_run.infer.engine import Decoder, EngineOptions, SessionKey, generate
    from gemma_run.infer.engine.watch import CHECK_EVERY

    class Collect:
        def __init__(self) -> None:
            self.parts: list[list[int]] = []

        def put(self, value) -> None:
            assert value.device.type == "cpu"
            self.parts.append(value.reshape(-1).tolist())

    tok, model, device = loaded.tokenizer, loaded.model, loaded.input_device
    ids = tok(LONG, return_tensors="pt")["input_ids"].to(device)
    mask = torch.ones_like(ids)
    kwargs = {"max_new_tokens": 60, "do_sample": False, "eos_token_id": [], "pad_token_id": tok.pad_token_id}
    options = EngineOptions("fast", graph=graph)
    with torch.inference_mode():
        plain = generate(model, ids, mask, kwargs, options)[0, ids.shape[1]:].tolist()
        eos = plain[20]  # a token of the greedy run taken as EOS: row 0 ends at its first appearance
        end = plain.index(eos) + 1
        seen = Collect()
        got = generate(model, ids, mask, {**kwargs, "eos_token_id": [eos]}, options,
                       streamer=seen)[0, ids.shape[1]:].tolist()
    assert seen.parts[0] == ids[0].tolist()  # the prompt first, as generate() streams it
    streamed = [t for part in seen.parts[1:] for t in part]
    assert streamed[:end] == got[:end] == plain[:end]
    assert all(t == tok.pad_token_id for t in streamed[end:])  # after EOS only padding, if anything
    assert all(t == tok.pad_token_id for t in got[end:])
    session = Decoder.of(model).sessions[SessionKey(batch=1, length=256, compile=False,
                                                    graph=graph and device.type == "cuda", greedy=True)]
    steps = session.steps_run
    with torch.inference_mode():
        generate(model, ids, mask, {**kwargs, "eos_token_id": [plain[0]]}, options)
    ran = session.steps_run - steps
    # every row ended at the first token: stopped at the first look (on a GPU, the look after: it sees the
    # previous look's copy)
    assert ran < CHECK_EVERY * (2 if device.type == "cuda" else 1)


def generate_on_device(loaded, ids: list[list[int]], engine: EngineOptions, new: int):
    """Greedy ``new`` tokens for the token rows ``ids`` (left-padded) on the model's device through ``engine``
    (the fast loop, or generate()): the whole output ids."""
    import torch

    from gemma_run import compose
    from gemma_run.infer import generate as gen
    from gemma_run.infer.stats import TimingStreamer

    tok = loaded.tokenizer
    tok.padding_side = "left"
    g = compose([f"generation.max_new_tokens={new}"]).generation
    kwargs = {**gen.generation_kwargs(g, loaded.model, tok, chat=False, engine=engine), "min_new_tokens": new}
    inputs = tok.pad({"input_ids": ids}, padding=True, return_tensors="pt").to(loaded.input_device)
    with torch.inference_mode():
        if engine.name == "fast":
            from gemma_run.infer.engine import generate

            return generate(loaded.model, inputs["input_ids"], inputs["attention_mask"], kwargs, engine)
        return loaded.model.generate(**inputs, **kwargs, streamer=TimingStreamer())


def _is_4bit_linear(module) -> bool:
    import torch

    w = getattr(module, "weight", None)
    return (isinstance(module, torch.nn.Linear) and w is not None
            and (type(w).__name__ == "Params4bit" or type(w).__module__.startswith("torchao")))


def count_4bit_linears(model) -> int:
    """The model's Linears holding 4-bit weights (bitsandbytes or torchao)."""
    return sum(_is_4bit_linear(m) for m in model.modules())


def dequantize_in_place(model) -> int:
    """Every 4-bit Linear's weight replaced by its bf16 dequantization (torchao or bitsandbytes); returns how many."""
    import torch

    count = 0
    for module in model.modules():
        if not _is_4bit_linear(module):
            continue
        w = module.weight
        if type(w).__name__ == "Params4bit":
            import bitsandbytes.functional as bf

            dense = bf.dequantize_4bit(w.data, w.quant_state)
        else:  # torchao's int4 layouts implement linear, not dequantize: x @ W.T with x = I gives W.T back
            eye = torch.eye(module.in_features, dtype=torch.bfloat16, device=w.device)
            dense = torch.nn.functional.linear(eye, w).T
        new = torch.nn.Linear(module.in_features, module.out_features, bias=module.bias is not None,
                              device=dense.device, dtype=torch.bfloat16)
        new.weight.data.copy_(dense[: module.out_features, : module.in_features].to(torch.bfloat16))
        if module.bias is not None:
            new.bias.data.copy_(module.bias.data)
        module.forward = new.forward  # the same module object, now computing with the dense weight
        module._gemma_run_dense = new
        count += 1
    return count


def top1_agreement_after_unfusing(loaded, out, prompt_len: int, quantized: int) -> float:
    """How often the fast path's tokens ``out`` (prompt + generated, one row) are the top-1 token of a reference
    computation: the model's own 4-bit weights (put back by unfuse) dequantized to bf16, eager, teacher-forced.
    ``quantized``: the model's 4-bit Linears before generating (``count_4bit_linears``), every one of which the
    engine must have put back for the reference to be the whole model."""
    import torch

    from gemma_run.infer.engine import Decoder

    Decoder.of(loaded.model).restore()
    generated = out[0, prompt_len:]
    assert quantized > 0
    assert dequantize_in_place(loaded.model) == quantized
    with torch.inference_mode():
        logits = loaded.model(input_ids=out[:, :-1]).logits[0, prompt_len - 1:].float()
    return (logits.argmax(-1) == generated).float().mean().item()
