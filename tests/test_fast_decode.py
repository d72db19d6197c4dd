"""The fast generation engine (gemma_run.infer.engine) on the tiny random-weight Gemma 3 (CPU): the same greedy
tokens as transformers' generate() eager and compiled, in bf16, for a left-padded batch whose long prompt runs
past the sliding window; EOS and stop strings end rows as generate() ends them; sampling is seeded; and the
engine choice (auto/fast/hf) says why it fell back."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers.decode import LONG, check_greedy_and_stopping, check_streaming, eos_from, generate_tokens

from gemma_run import run
from gemma_run.app.errors import GemmaRunError
from gemma_run.infer.engine import HF, Decoder, EngineOptions, SessionKey, choose_engine, generate
from gemma_run.infer.engine.options import COMPILE_MIN_TOKENS


def _first_new(row: list[int], start: int) -> int:
    """The first step at or after ``start`` whose token the row had not made before."""
    return next(i for i in range(start, len(row)) if row[i] not in row[:i])


def _ended(rows: list[list[int]], eos: list[int], min_new: int, pad: int) -> list[list[int]]:
    """Greedy ``rows`` made without EOS, as they come out with ``eos``: each ends at its first EOS from step
    ``min_new`` on, padding after it (valid when no row makes an EOS id before ``min_new``)."""
    out = []
    for row in rows:
        assert not set(row[:min_new]) & set(eos)
        end = next((i for i in range(min_new, len(row)) if row[i] in eos), len(row) - 1)
        out.append(row[:end + 1] + [pad] * (len(row) - end - 1))
    return out


@pytest.fixture(scope="module")
def bf16(cache_dir: Path):
    from gemma_run import compose
    from gemma_run.loading import load

    loaded = load(compose([f"cache_dir={cache_dir}", "model.dtype=bfloat16"]))
    loaded.tokenizer.padding_side = "left"
    return loaded


@pytest.mark.parametrize(("compiled", "attention"), [(False, None), (True, None), (False, "decode"), (True, "decode")],
                         ids=["eager-step", "compiled-step", "eager-step-decode-attention",
                              "compiled-step-decode-attention"])
def test_fast_engine_gives_generates_greedy_tokens_in_bf16(bf16, compiled: bool, attention: str | None) -> None:
    """Left-padded batch of two, greedy, bf16: the fast engine's tokens and stopping are generate()'s, whatever
    its step runs as (the decode attention included: the prompt's pass keeps the model's sdpa, as generate())."""
    from gemma_run.infer.engine import decode_attention

    name = decode_attention.register() if attention else None
    check_greedy_and_stopping(bf16, EngineOptions("fast", compiled, True, "test", attention=name))
    assert bf16.model.config._attn_implementation == "sdpa"  # the model's own is back after the steps


def test_fast_engine_stops_at_eos_and_stop_strings_as_generate_does(bf16) -> None:
    import torch

    tok, model = bf16.tokenizer, bf16.model
    ids = tok(LONG, return_tensors="pt")
    with torch.inference_mode():
        greedy = model.generate(**ids, max_new_tokens=24, do_sample=False, pad_token_id=tok.pad_token_id)
    new = greedy[0, ids["input_ids"].shape[1]:].tolist()
    k = next(i for i in range(2, len(new)) if new[i] not in new[:i])  # a token first produced at step k
    fast = EngineOptions("fast", False, True, "test")
    for engine in (HF, fast):
        (out,) = generate_tokens(bf16, [LONG], engine, new=24, eos_token_id=[new[k]])
        assert (out.new_tokens, out.stopped_by) == (k + 1, "eos"), engine
    # a stop string: the text of that token, which first appears with it
    stop = tok.decode([new[k]], skip_special_tokens=True).strip() or tok.decode(new[k:k + 2]).strip()
    assert stop
    ref = generate_tokens(bf16, [LONG], HF, new=24, stop=[stop], stop_strings=[stop], tokenizer=tok)
    got = generate_tokens(bf16, [LONG], fast, new=24, stop=[stop])
    assert ref[0].stopped_by == "stop_string"
    assert (got[0].completion, got[0].stopped_by) == (ref[0].completion, "stop_string")


def test_two_stage_argmax_is_torchs_argmax_ties_and_padding_included() -> None:
    """The greedy step's argmax (chunked, so a compiled step runs it in parallel) gives torch's index: the first of
    equal maxima, whichever chunks they are in, for vocabularies that do and do not fill the last chunk."""
    import torch

    from gemma_run.infer.engine.sampling import ARGMAX_CHUNK, argmax

    torch.manual_seed(0)
    for vocab in (5, ARGMAX_CHUNK, ARGMAX_CHUNK + 1, 262_208):
        x = torch.randn(4, vocab)
        x[1, vocab // 3] = x[1, vocab - 1] = x[1].max() + 1  # tied maxima in different chunks
        x[2, :] = 0.0  # all equal: index 0
        x[3, vocab - 1] = float("inf")
        assert torch.equal(argmax(x), x.argmax(-1)), vocab
        assert argmax(x)[1] == vocab // 3 and argmax(x)[2] == 0 and argmax(x)[3] == vocab - 1


@pytest.mark.parametrize("compiled", [False, True], ids=["eager-step", "compiled-step"])
def test_greedy_step_picks_on_the_device_as_the_host_loop_does(bf16, compiled: bool) -> None:
    """A greedy session's step picks its own token (sampling.Picker: EOS held back under min_new_tokens, finished rows
    padded, positions advanced on the device); with more EOS ids than the step has slots the loop picks on the
    host instead. Same ids (the extra ones repeats), same tokens: a left-padded batch of two where one row hits an
    EOS mid-run and the other is held past it by min_new_tokens, then a stop string."""
    import torch

    from gemma_run.infer.engine.sampling import EOS_SLOTS

    tok, model = bf16.tokenizer, bf16.model
    options = EngineOptions("fast", compiled)
    batch = tok([LONG, "hello there"], return_tensors="pt", padding=True)
    ids, mask = batch["input_ids"], batch["attention_mask"]
    kwargs = {"max_new_tokens": 24, "do_sample": False, "pad_token_id": tok.pad_token_id, "eos_token_id": []}
    with torch.inference_mode():
        plain = generate(model, ids, mask, kwargs, options)[:, ids.shape[1]:]
    row = plain[0].tolist()
    k = next(i for i in range(8, len(row)) if row[i] not in row[:i])  # a token row 0 first makes at step k
    eos = row[k]
    for min_new in (0, k + 3):
        device_pick = {**kwargs, "min_new_tokens": min_new, "eos_token_id": [eos, 1]}
        host_pick = {**device_pick, "eos_token_id": [eos, 1] * EOS_SLOTS}  # more ids than the step's slots
        with torch.inference_mode():
            a = generate(model, ids, mask, device_pick, options)
            b = generate(model, ids, mask, host_pick, options)
        assert torch.equal(a, b), min_new
        row0 = a[0, ids.shape[1]:].tolist()
        if min_new == 0:  # the row ends at the EOS, padding after it
            assert row0[:k + 1] == row[:k + 1] and set(row0[k + 1:]) == {tok.pad_token_id}
        else:  # held back until min_new_tokens: the row goes past it with other tokens
            assert row0[:k] == row[:k] and eos not in row0[:min_new] and tok.pad_token_id not in row0[:min_new]
    sessions = {key.greedy: s for key, s in Decoder.of(model).sessions.items() if key.compile == compiled}
    assert sessions[True].picker is not None and sessions[False].picker is None
    stop = tok.decode(plain[0, 6:8]).strip()
    assert stop
    got = generate_tokens(bf16, [LONG], EngineOptions("fast", compiled, True, "test"), new=24, stop=[stop])
    assert got[0].stopped_by == "stop_string" and stop not in got[0].completion


@pytest.mark.parametrize("engine", ["hf", "fast-device-pick", "fast-host-pick"])
def test_an_eos_made_at_exactly_min_new_tokens_ends_the_row(bf16, engine: str) -> None:
    """min_new_tokens=k holds EOS back at steps 0..k-1 only (generate()'s rule): an EOS the model makes at step k
    ends the row there, whether the step picks on the device or the loop on the host; min_new_tokens=k+1 holds
    that same EOS back."""
    import torch

    tok = bf16.tokenizer
    ids = tok(LONG, return_tensors="pt")["input_ids"]
    kwargs = {"max_new_tokens": 24, "do_sample": False, "pad_token_id": tok.pad_token_id, "eos_token_id": []}
    with torch.inference_mode():
        plain = generate(bf16.model, ids, torch.ones_like(ids), kwargs, EngineOptions("fast"))[0, ids.shape[1]:]
    plain = plain.tolist()
    k = _first_new(plain, 6)
    chosen = {"hf": HF, "fast-device-pick": EngineOptions("fast", False, True, "test"),
              "fast-host-pick": EngineOptions("fast", False, True, "test", pick=False)}[engine]
    (at,) = generate_tokens(bf16, [LONG], chosen, new=24, eos_token_id=[plain[k]], min_new_tokens=k)
    assert (at.new_tokens, at.stopped_by) == (k + 1, "eos")
    (held,) = generate_tokens(bf16, [LONG], chosen, new=24, eos_token_id=[plain[k]], min_new_tokens=k + 1)
    assert held.new_tokens > k + 1


@pytest.mark.parametrize("placement", ["with_step", "compiled_apart", "eager"])
def test_each_placement_of_the_compiled_pick_gives_the_hosts_tokens(bf16, placement: str) -> None:
    """A compiled greedy step can run its pick in three places (EngineOptions.pick_placement); each placement
    must give the tokens of the loop picking on the host."""
    import torch

    options = EngineOptions("fast", True, pick_placement=placement)
    host_pick = EngineOptions("fast", True, pick=False)
    batch = bf16.tokenizer([LONG, "hello there"], return_tensors="pt", padding=True)
    ids, mask, pad = batch["input_ids"], batch["attention_mask"], bf16.tokenizer.pad_token_id
    kwargs = {"max_new_tokens": 16, "min_new_tokens": 4, "do_sample": False, "pad_token_id": pad}
    with torch.inference_mode():  # the host's greedy tokens without EOS: row 0's EOS is taken from them
        plain = generate(bf16.model, ids, mask, {**kwargs, "eos_token_id": []}, host_pick)[:, ids.shape[1]:].tolist()
    eos = [eos_from(plain, 4, 6), eos_from(plain[::-1], 4, 6)]  # one made by row 0, one by row 1
    kwargs["eos_token_id"] = eos
    with torch.inference_mode():
        device = generate(bf16.model, ids, mask, kwargs, options)
        host = generate(bf16.model, ids, mask, kwargs, host_pick)
    assert torch.equal(device, host)
    expected = _ended(plain, eos, 4, pad)
    assert expected[0][-1] == pad  # row 0 ends before max_new_tokens: stopping is compared
    assert device[:, ids.shape[1]:].tolist() == expected
    decoder = Decoder.of(bf16.model)  # the session of this placement picked on the device, the host's did not
    placed = decoder.find(batch=2, compile=True, greedy=True, pick_placement=placement)
    assert placed and all(s.picker is not None and s.steps_run for s in placed)
    assert all(s.picker is None for s in decoder.find(batch=2, compile=True, greedy=False))


def test_fast_engine_sampling_is_seeded_and_top_k_1_is_greedy(bf16) -> None:
    import torch

    fast = EngineOptions("fast", False, True, "test")
    sample = {"do_sample": True, "temperature": 0.9, "top_p": 0.9, "top_k": 50, "min_new_tokens": 16}
    torch.manual_seed(3)
    a = generate_tokens(bf16, [LONG], fast, new=16, **sample)
    torch.manual_seed(3)
    b = generate_tokens(bf16, [LONG], fast, new=16, **sample)
    torch.manual_seed(4)
    c = generate_tokens(bf16, [LONG], fast, new=16, **sample)
    assert a[0].completion == b[0].completion != c[0].completion
    one = generate_tokens(bf16, [LONG], fast, new=16, **{**sample, "top_k": 1})
    greedy = generate_tokens(bf16, [LONG], fast, new=16, min_new_tokens=16)
    assert one[0].completion == greedy[0].completion


def test_engine_choice_and_its_reasons(compose_cfg, bf16) -> None:
    model = bf16.model

    def choose(*overrides: str, images: bool = False) -> EngineOptions:
        return choose_engine(compose_cfg(list(overrides)).generation, model, images=images)

    assert choose().name == "hf" and "CUDA" in choose().reason  # auto on a CPU
    decode = "gemma_run_decode"  # the compiled step's attention by default (gemma_run.infer.engine.decode_attention)
    assert choose("generation.compile=true") == EngineOptions("fast", True, True, "generation.compile=true",
                                                           attention=decode, fuse=True)
    assert choose("generation.compile=true", "generation.step_attention=model").attention is None
    assert choose("generation.engine=fast") == EngineOptions("fast", False, True, "generation.engine=fast", fuse=True)
    assert not choose("generation.engine=fast", "generation.fuse_projections=false").fuse
    assert not choose("generation.engine=fast", "generation.device_pick=false").pick
    assert not choose("generation.engine=hf").fuse
    assert choose("generation.engine=fast", "generation.step_attention=decode").attention == decode
    assert choose("generation.engine=fast", "generation.compile=true").compile
    assert "repetition_penalty" in choose("generation.repetition_penalty=1.2").reason
    assert choose("generation.cache_implementation=static").name == "hf"
    assert choose("generation.engine=auto", images=True).name == "hf"
    with pytest.raises(GemmaRunError, match="repetition_penalty") as e:
        choose("generation.engine=fast", "generation.repetition_penalty=1.2")
    assert e.value.key == "generation.engine"


def test_auto_compiles_on_a_gpu_only_when_the_run_is_long_enough_to_pay_for_it(compose_cfg) -> None:
    """On a GPU, auto takes the fast engine recorded as a CUDA graph; its step is compiled for runs of
    >= COMPILE_MIN_TOKENS tokens (and bench, where the count is not given), while a one-off prompt runs the eager
    step at once instead of waiting minutes for a compile."""
    import torch

    class OnGpu:  # what choose_engine reads of a model on one CUDA GPU
        _can_compile_fullgraph = True

        def parameters(self):
            return iter([_Cuda()])

        def buffers(self):
            return iter(())

        def modules(self):  # no bitsandbytes NF4 layers: the 4-bit kernel stays bitsandbytes'
            return iter(())

    class _Cuda:
        device = torch.device("cuda", 0)

    def choose(*overrides: str, tokens: int | None) -> EngineOptions:
        return choose_engine(compose_cfg(list(overrides)).generation, OnGpu(), tokens=tokens)

    decode = "gemma_run_decode"
    assert choose(tokens=None) == EngineOptions("fast", True, True, "one CUDA GPU", graph=True, attention=decode,
                                             fuse=True)
    assert choose(tokens=COMPILE_MIN_TOKENS).compile
    short = choose(tokens=64)
    assert (short.name, short.compile, short.graph) == ("fast", False, True)
    assert "generation.compile=true" in short.reason
    assert choose("generation.compile=true", tokens=64) == EngineOptions("fast", True, True, "generation.compile=true",
                                                                      graph=True, attention=decode, fuse=True)
    assert (choose("generation.compile=false", tokens=10_000).compile, choose("generation.compile=false",
                                                                              tokens=10_000).graph) == (False, True)
    assert not choose("generation.cuda_graph=false", "generation.compile=true", tokens=64).graph
    assert choose("generation.cuda_graph=false", tokens=64).name == "hf"  # eager and launch-bound: nothing gained
    assert choose("generation.engine=fast", tokens=64) == EngineOptions("fast", False, True, "generation.engine=fast",
                                                                     graph=True, fuse=True)
    assert choose("generation.engine=fast", tokens=None).compile


def test_infer_and_bench_run_the_fast_engine_end_to_end(compose_cfg, tmp_path: Path) -> None:
    outs = {}
    for engine in ("hf", "fast"):
        run_dir = tmp_path / engine
        result = run(compose_cfg([f"generation.engine={engine}", "batch_size=2", "prompt=" + LONG,
                                  "generation.max_new_tokens=20"]), run_dir)
        assert result["engine"] == engine
        if engine == "fast":  # what the step ran as: eager, no CUDA graph on a CPU, projections fused
            assert [(s["compiled"], s["cuda_graph"], s["device_pick"]) for s in result["engine_sessions"]] == [
                (False, False, True)]
            assert result["fused_projections"] == 4
        outs[engine] = [json.loads(line)["completion"] for line in (run_dir / "generations.jsonl").open()]
    assert outs["fast"] == outs["hf"]
    result = run(compose_cfg(["task=bench", "generation.engine=fast", "task.prompt_tokens=[20]",
                              "task.new_tokens=[6]", "task.batch_sizes=[2]", "task.probe_bytes=32MiB"]),
                 tmp_path / "bench")
    data = json.loads((tmp_path / "bench" / "bench.json").read_text())
    assert data["generation"]["engine"] == "fast" and data["generation"]["cache_implementation"] == "static"
    assert result["decode_tokens_per_second"] > 0 and data["rows"][0]["new_tokens"] == 6


def test_planner_sizes_the_fast_engines_cache_as_it_really_is(compose_cfg, bf16) -> None:
    """The fast engine's static cache keeps every layer at full (bucketed) length, sliding layers included;
    the planner must count that, or a long prompt would pass the preflight and then run out of memory."""
    import torch

    from gemma_run.infer.engine import static_length
    from gemma_run.planning import inputs, kv, skeleton

    overrides = ["model.dtype=bfloat16", "plan.gpus=[24GiB]", "plan.prompt_tokens=300", "generation.max_new_tokens=40"]
    p, _ = inputs.from_cfg(compose_cfg([*overrides, "generation.engine=fast"]), "infer")
    assert p.static_cache_len == static_length(340, 512) == 512
    assert inputs.from_cfg(compose_cfg([*overrides, "generation.engine=hf"]), "infer")[0].static_cache_len == 0
    # auto decodes on the fast engine on one GPU, on generate() when several share the model
    assert inputs.from_cfg(compose_cfg(overrides), "infer")[0].static_cache_len == 512
    assert inputs.from_cfg(compose_cfg([*overrides, "plan.gpus=[24GiB,24GiB]"]), "infer")[0].static_cache_len == 0
    # compile=false still decodes on the fast engine (its eager step as a CUDA graph); without graph or compile, not
    assert inputs.from_cfg(compose_cfg([*overrides, "generation.compile=false"]), "infer")[0].static_cache_len == 512
    no_graph = [*overrides, "generation.cuda_graph=false"]
    assert inputs.from_cfg(compose_cfg(no_graph), "infer")[0].static_cache_len == 0
    # the real cache after a run of that shape holds exactly the planned bytes
    ids = torch.randint(3, 500, (1, 300))
    kwargs = {"max_new_tokens": 40, "do_sample": False, "eos_token_id": [1], "pad_token_id": 0}
    first = generate(bf16.model, ids, torch.ones_like(ids), kwargs, EngineOptions("fast"))
    # called again outside inference mode: the session's cache and mask (inference tensors by now) are reset
    assert torch.equal(generate(bf16.model, ids, torch.ones_like(ids), kwargs, EngineOptions("fast")), first)
    session = Decoder.of(bf16.model).sessions[SessionKey(batch=1, length=512, compile=False, greedy=True)]
    real = sum(t.numel() * t.element_size() for layer in session.cache.layers for t in (layer.keys, layer.values))
    shape = kv.shape_of(skeleton.text_config(skeleton.build(p.config, True, "bfloat16")))
    assert real == kv.kv_bytes(shape, 340, 1, 2, static_len=p.static_cache_len)
    assert real > kv.kv_bytes(shape, 340, 1, 2)  # generate()'s cache caps the sliding layer at its 16-token window


def test_a_rewound_decode_step_runs_again_to_the_same_cache_and_logits(bf16) -> None:
    """Recording a CUDA graph runs the current step again (warm-up, then the replay); that is only right if the
    rerun writes the same cache slot and gives the same logits, which needs the cache's on-device position
    (transformers' cumulative_length) put back first. Without the rewind a rerun writes the next slot."""
    import torch

    from gemma_run.infer.engine.session import rewinder

    model = bf16.model
    decoder = Decoder.of(model)
    s = decoder.session(decoder.key(1, 40, EngineOptions("fast"), cuda=False, greedy=False))
    ids = torch.randint(3, 500, (1, 12))
    mask = torch.ones(1, s.length, dtype=torch.long)
    with torch.inference_mode():
        s.cache.reset()
        model(input_ids=ids, attention_mask=mask, position_ids=torch.arange(12)[None], cache_position=torch.arange(12),
              past_key_values=s.cache, use_cache=True)
        args = (torch.tensor([[7]]), torch.tensor([[12]]), torch.tensor([12]), mask)
        rewind = rewinder(s.cache)
        first = s.step(*args).clone()
        cache = [(layer.keys.clone(), layer.values.clone()) for layer in s.cache.layers]
        rewind()
        assert torch.equal(s.step(*args), first)
        assert all(torch.equal(layer.keys, k) and torch.equal(layer.values, v)
                   for layer, (k, v) in zip(s.cache.layers, cache, strict=True))
        s.step(*args)  # no rewind: the step lands in the next slot
        assert not all(torch.equal(layer.keys, k) for layer, (k, _) in zip(s.cache.layers, cache, strict=True))


def test_streamed_tokens_are_the_returned_ones_and_a_finished_batch_stops(bf16) -> None:
    """The loop streams and looks at finished rows every CHECK_EVERY steps: what the streamer got is exactly row
    0's new tokens up to its EOS (padding after it, if anything), and a batch whose rows have all ended stops at
    the next look instead of running to max_new_tokens."""
    check_streaming(bf16, graph=False)
