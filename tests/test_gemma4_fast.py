"""The fast generation engine (generation.engine=fast) on the tiny Gemma 4 models (CPU, fp32): the same greedy
tokens as transformers' generate(), for a left-padded batch whose long prompt runs past the sliding window, and
the same stopping: an EOS the first row makes mid-run, with min_new_tokens below max_new_tokens, and the run
end to end (generations.jsonl of engine=fast against engine=hf)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers.decode import LONG, check_greedy_and_stopping

from gemma_run import run
from gemma_run.infer.engine import EngineOptions

MODELS = ["tiny_gemma4", "tiny_gemma4_moe"]


@pytest.fixture(scope="module", params=MODELS)
def loaded(request, cache_dir: Path):
    from gemma_run import compose
    from gemma_run.loading import load

    out = load(compose([f"cache_dir={cache_dir}", f"model={request.param}", "model.dtype=float32"]))
    out.tokenizer.padding_side = "left"
    return out


@pytest.mark.parametrize("compiled", [False, True], ids=["eager-step", "compiled-step"])
def test_fast_engine_gives_generates_greedy_tokens(loaded, compiled: bool) -> None:
    check_greedy_and_stopping(loaded, EngineOptions("fast", compiled, True, "test"))


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
