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
