"""task=infer (generate()) and task=merge on the tiny Gemma 4 models: the CLI end to end into generations.jsonl,
with Gemma 4's chat format (<|turn>role ... <turn|>, its end of turn a stop token), and a merged LoRA adapter
that computes what base + adapter compute."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers.data import alpaca_rows, write_jsonl
from helpers.runs import run_dirs, train_api


def test_gemma4_chat_format(compose_cfg) -> None:
    from gemma_run.loading import load_tokenizer
    from gemma_run.loading.checkpoint import resolve

    cfg = compose_cfg(["model=tiny_gemma4"])
    tok = load_tokenizer(resolve(cfg.model, cfg.cache_dir), cfg.model)
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": " Hi "},
                {"role": "assistant", "content": "<|channel>thought\nhm<channel|>Hello"}]
    text = tok.apply_chat_template(messages, tokenize=False)
    assert text == ("<bos><|turn>system\nBe brief.<turn|>\n<|turn>user\nHi<turn|>\n<|turn>model\nHello<turn|>\n")
    prompt = tok.apply_chat_template(messages[:2], tokenize=False, add_generation_prompt=True)
    assert prompt.endswith("<|turn>model\n") and text.startswith(prompt)  # training masks the prompt by it
    for marker in ("<|turn>", "<turn|>", "<|think|>", "<|channel>", "<channel|>"):
        assert len(tok(marker, add_special_tokens=False)["input_ids"]) == 1, marker
    thinking = tok.apply_chat_template(messages[1:2], tokenize=False, add_generation_prompt=True,
                                       enable_thinking=True)
    assert thinking.startswith("<bos><|turn>system\n<|think|>\n<turn|>\n")
    gemma3 = compose_cfg([])
    assert "<start_of_turn>" in load_tokenizer(resolve(gemma3.model, gemma3.cache_dir), gemma3.model).chat_template


def test_end_of_turn_stops_generation(compose_cfg) -> None:
    from gemma_run.loading import load

    loaded = load(compose_cfg(["model=tiny_gemma4"]), device_map=None)
    end_turn = loaded.tokenizer.convert_tokens_to_ids("<turn|>")
    assert loaded.model.generation_config.eos_token_id == [loaded.tokenizer.eos_token_id, end_turn]


def test_unknown_chat_format_is_refused() -> None:
    from gemma_run.app.errors import ConfigError
    from gemma_run.loading import tokenizer_build

    with pytest.raises(ConfigError) as e:
        tokenizer_build.chat_format("gemma5")
    assert e.value.key == "model.chat_template" and "gemma4" in e.value.fix


@pytest.mark.slow
@pytest.mark.parametrize("model", ["tiny_gemma4", "tiny_gemma4_moe"])
def test_cli_infer_writes_generations(cli, tmp_path: Path, model: str) -> None:
    prompts = tmp_path / "p.txt"
    prompts.write_text("hi\nThe quick brown fox jumps over the lazy dog again and again\nWhat is it?\n")
    proc = cli("task=infer", f"model={model}", f"prompts_file={prompts}", "batch_size=2", "chat=true",
               "system_prompt=Be brief.", "generation.max_new_tokens=8", "generation.engine=hf", timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    [run_dir] = run_dirs(tmp_path)
    records = [json.loads(line) for line in (run_dir / "generations.jsonl").read_text().splitlines()]
    assert [r["index"] for r in records] == [0, 1, 2]
    assert all(1 <= r["new_tokens"] <= 8 and r["prompt_tokens"] > 10 for r in records)
    result = json.loads((run_dir / "result.json").read_text())
    assert result["status"] == "ok" and result["engine"] == "hf"


@pytest.mark.slow
def test_merge_gemma4_adapter(compose_cfg, tmp_path: Path) -> None:
    """A LoRA adapter of tiny_gemma4 (KV-shared layers have no k/v projections, global layers no v_proj) merged by
    task=merge: the merged checkpoint's logits are base + adapter's, and it runs task=infer."""
    import torch
    from peft import PeftModel

    from gemma_run import run
    from gemma_run.loading import load

    data = write_jsonl(tmp_path / "alpaca.jsonl", alpaca_rows())
    run_dir = tmp_path / "run"
    train_api(compose_cfg, run_dir, "model=tiny_gemma4", f"data.train_file={data}", "train.max_steps=3",
              "train.save_steps=3", "train.learning_rate=0.01")
    merged = Path(run(compose_cfg(["task=merge", "model=tiny_gemma4", f"task.adapter={run_dir}"]),
                      tmp_path / "merge")["merged"])
    assert (merged / "model.safetensors").is_file()
    base = load(compose_cfg(["model=tiny_gemma4"]), device_map=None)
    with_adapter = PeftModel.from_pretrained(base.model, str(run_dir / "adapter")).eval()
    reloaded = load(compose_cfg(["model=tiny_gemma4", f"model.path={merged}", "model.weights=pretrained"]),
                    device_map=None).model
    ids = torch.tensor([[2, 40, 41, 42, 43, 44] * 4])  # past the sliding window
    with torch.no_grad():
        plain = load(compose_cfg(["model=tiny_gemma4"]), device_map=None).model(ids).logits
        a, b = with_adapter(ids).logits, reloaded(ids).logits
    assert torch.allclose(a, b, atol=1e-4) and not torch.allclose(a, plain, atol=1e-3)
    result = run(compose_cfg(["task=infer", "model=tiny_gemma4", f"model.path={merged}", "model.weights=pretrained",
                              "prompt=Hello", "generation.max_new_tokens=4"]), tmp_path / "infer")
    assert result["status"] == "ok" and result["new_tokens"] == 4
