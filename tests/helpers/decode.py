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
