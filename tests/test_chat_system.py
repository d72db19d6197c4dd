"""A chat that opens with two system messages keeps both, joined in order, in the text the model sees: in an
inference prompt (Gemma's template, and a template without a system role) and in a training example."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from helpers.templates import without_system_role

from gemma_run.infer.prompts import PromptItem
from gemma_run.infer.render import render

TWO_SYSTEMS = [{"role": "system", "content": "Answer in French."},
               {"role": "system", "content": "Be brief."},
               {"role": "user", "content": "Hi"}]


@pytest.fixture(scope="module")
def tiny_tokenizer(tmp_path_factory):
    from gemma_run import compose
    from gemma_run.loading import checkpoint, load_tokenizer

    cache = Path(os.environ.get("GEMMA_RUN_TEST_CACHE") or tmp_path_factory.mktemp("tokcache"))
    cfg = compose([f"cache_dir={cache}"])
    return load_tokenizer(checkpoint.resolve(cfg.model, cfg.cache_dir), cfg.model)


def test_infer_keeps_both_system_messages_in_order(tiny_tokenizer):
    item = PromptItem(0, "prompts.jsonl:1", messages=TWO_SYSTEMS)
    text = render(item, tiny_tokenizer, chat=True, system_prompt="ignored: the chat has its own")
    assert text == ("<bos><start_of_turn>user\nAnswer in French.\n\nBe brief.\n\nHi<end_of_turn>\n"
                    "<start_of_turn>model\n")
    assert item.messages == TWO_SYSTEMS  # what generations.jsonl records is the input as given


def test_infer_template_without_system_role_keeps_both(tiny_tokenizer):
    with without_system_role(tiny_tokenizer) as tok:
        text = render(PromptItem(0, "prompts.jsonl:1", messages=TWO_SYSTEMS), tok, chat=True, system_prompt=None)
    assert text == "[user]Answer in French.\n\nBe brief.\n\nHi"


def test_training_example_keeps_both_system_messages_in_order(compose_cfg, tmp_path: Path):
    from gemma_run.loading import load
    from gemma_run.training import data

    record = {"messages": [*TWO_SYSTEMS, {"role": "assistant", "content": "Salut"}]}
    train_file = tmp_path / "chat.jsonl"
    train_file.write_text(json.dumps(record) + "\n")
    cfg = compose_cfg(["task=train", f"data.train_file={train_file}", "train.max_seq_length=128"])
    tok = load(cfg, device_map=None).tokenizer
    row = data.prepare(cfg, tok, data.read_checked(cfg)).train[0]
    assert tok.decode(row["input_ids"]) == ("<bos><start_of_turn>user\nAnswer in French.\n\nBe brief.\n\nHi"
                                            "<end_of_turn>\n<start_of_turn>model\nSalut<end_of_turn>\n")
    learned = tok.decode([i for i, lab in zip(row["input_ids"], row["labels"], strict=True) if lab != -100])
    assert learned == "Salut<end_of_turn>\n"
