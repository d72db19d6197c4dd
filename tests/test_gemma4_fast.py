"""The fast generation engine (generation.engine=fast) on the tiny Gemma 4 models (CPU, fp32): the same greedy
tokens as transformers' generate(), for a left-padded batch whose long prompt runs past the sliding window, and
the same stopping: an EOS the first row makes mid-run, with min_new_tokens below max_new_tokens, and the run
end to end (generations.jsonl of engine=fast against engine=hf)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers.decode import LONG, generate_tokens

from gemma_run import run
from gemma_run.infer.engine import HF, EngineOptions

MODELS = ["tiny_gemma4", "tiny_gemma4_moe"]


def _eos_from(rows: list[list[int]], min_new: int, start: int) -> int:
    """A token row 0 first makes at step ``start`` or later and no row makes before ``min_new``: taken as EOS,
    row 0 stops there and nothing earlier changes."""
    early = {t for row in rows for t in row[:min_new]}
    return next(rows[0][i] for i in range(start, len(rows[0]))
                if rows[0][i] not in rows[0][:i] and rows[0][i] not in early)


@pytest.fixture(scope="module", params=MODELS)
def loaded(request, cache_dir: Path):
    from gemma_run import compose
    from gemma_run.loading import load

    out = load(compose([f"cache_dir={cache_dir}", f"model={request.param}", "model.dtype=float32"]))
    out.tokenizer.padding_side = "left"
    return out


@pytest.mark.parametrize("compiled", [False, True], ids=["eager-step", "compiled-step"])
def test_fast_engine_gives_generates_greedy_tokens(loaded, compiled: bool) -> None:
    import torch

    prompts = [LONG, "hello there"]
    assert len(loaded.tokenizer(LONG)["input_ids"]) > 16  # past the sliding window
    engine = EngineOptions("fast", compiled, True, "test")
    ref = generate_tokens(loaded, prompts, HF, min_new_tokens=32)
    fast = generate_tokens(loaded, prompts, engine, min_new_tokens=32)
    assert [o.new_tokens for o in fast] == [32, 32]
    assert [o.completion for o in fast] == [o.completion for o in ref]
    # stopping: an EOS row 0 makes mid-run, min_new_tokens (4) < max_new_tokens (32)
    tok = loaded.tokenizer
    batch = tok(prompts, return_tensors="pt", padding=True)
    with torch.inference_mode():
        plain = loaded.model.generate(**batch, max_new_tokens=32, min_new_tokens=32, do_sample=False,
                                      pad_token_id=tok.pad_token_id)[:, batch["input_ids"].shape[1]:].tolist()
    eos = _eos_from(plain, 4, 8)
    ref = generate_tokens(loaded, prompts, HF, min_new_tokens=4, eos_token_id=[eos])
    fast = generate_tokens(loaded, prompts, engine, min_new_tokens=4, eos_token_id=[eos])
    assert (ref[0].stopped_by, ref[0].new_tokens) == ("eos", plain[0].index(eos) + 1)
    assert [(o.new_tokens, o.stopped_by, o.completion) for o in fast] == [
        (o.new_tokens, o.stopped_by, o.completion) for o in ref]


@pytest.mark.parametrize("model", MODELS)
def test_fast_run_writes_the_generations_of_generate(compose_cfg, tmp_path: Path, model: str) -> None:
    prompts = tmp_path / "p.txt"
    prompts.write_text(f"{LONG}\nhello there\n")
    records = {}
    for engine in ("hf", "fast"):
        result = run(compose_cfg(["task=infer", f"model={model}", f"prompts_file={prompts}",
                                  "batch_size=2", "generation.max_new_tokens=24", f"generation.engine={engine}"]),
                     tmp_path / engine)
        assert result["status"] == "ok" and result["engine"] == engine, result.get("engine_reason")
        lines = (tmp_path / engine / "generations.jsonl").read_text().splitlines()
        records[engine] = [(r["completion"], r["new_tokens"], r["stopped_by"]) for r in map(json.loads, lines)]
    assert records["fast"] == records["hf"]
