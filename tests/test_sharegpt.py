"""ShareGPT-style data ({"conversations": [{"from": human|gpt|system, "value"}]}), as LLaMA-Factory and Axolotl
users bring it: trained as chat by task=train, read as chat prompts from prompts_file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers.data import write_jsonl
from helpers.runs import run_dirs

from gemma_run.app.errors import GemmaRunError
from gemma_run.training import data_files as records

CONVERSATIONS = [
    {"conversations": [{"from": "system", "value": "Be brief."}, {"from": "human", "value": "Say hi"},
                       {"from": "gpt", "value": "hi"}]},
    {"system": "You count.", "conversations": [{"from": "human", "value": "Count"}, {"from": "gpt", "value": "1 2"},
                                               {"from": "human", "value": "More"}, {"from": "gpt", "value": "3"}]},
]


def test_sharegpt_records_become_chat_messages(tmp_path: Path) -> None:
    recs = records.read(str(write_jsonl(tmp_path / "d.jsonl", CONVERSATIONS)), "data.train_file")
    assert records.detect_format(recs[0]) == "sharegpt"
    records.check(recs, "sharegpt")
    records.normalize(recs, "sharegpt")
    assert recs[1].data == {"messages": [
        {"role": "system", "content": "You count."}, {"role": "user", "content": "Count"},
        {"role": "assistant", "content": "1 2"}, {"role": "user", "content": "More"},
        {"role": "assistant", "content": "3"}]}


def test_unknown_speaker_is_named_by_file_and_line(tmp_path: Path) -> None:
    bad = {"conversations": [{"from": "human", "value": "hi"}, {"from": "observation", "value": "x"}]}
    path = write_jsonl(tmp_path / "d.jsonl", [CONVERSATIONS[0], bad])
    recs = records.read(str(path), "data.train_file")
    with pytest.raises(GemmaRunError) as caught:
        records.check(recs, "sharegpt")
    assert caught.value.key == f"{path}:2"
    assert "conversations[1] has \"from\": 'observation'" in caught.value.problem


@pytest.mark.slow
def test_train_on_sharegpt(cli, tmp_path: Path) -> None:
    data = write_jsonl(tmp_path / "sharegpt.jsonl", CONVERSATIONS)
    proc = cli("task=train", f"data.train_file={data}", "train.max_steps=2", "train.logging_steps=1",
               "train.max_seq_length=128")
    assert proc.returncode == 0, proc.stderr[-3000:]
    [run_dir] = run_dirs(tmp_path)
    result = json.loads((run_dir / "result.json").read_text())
    assert result["data"]["format"] == "sharegpt" and result["global_step"] == 2
    assert result["data"]["train_examples"] == 2


def test_prompts_file_in_sharegpt_leaves_out_the_final_answer(cli, tmp_path: Path) -> None:
    prompts = write_jsonl(tmp_path / "prompts.jsonl", CONVERSATIONS)
    proc = cli(f"prompts_file={prompts}", "generation.max_new_tokens=2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    [run_dir] = run_dirs(tmp_path)
    rows = [json.loads(line) for line in (run_dir / "generations.jsonl").read_text().splitlines()]
    assert rows[0]["messages"] == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say hi"}]
    assert [m["role"] for m in rows[1]["messages"]] == ["system", "user", "assistant", "user"]
    assert rows[1]["messages"][-1]["content"] == "More"


def test_prompts_file_with_a_bad_speaker_names_the_line(cli, tmp_path: Path) -> None:
    bad = {"conversations": [{"from": "human", "value": "hi"}, {"from": "tool", "value": "x"}]}
    prompts = write_jsonl(tmp_path / "prompts.jsonl", [CONVERSATIONS[0], bad])
    proc = cli(f"prompts_file={prompts}")
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    assert "conversations[1] has \"from\": 'tool'" in proc.stderr and f"at:  {prompts}:2" in proc.stderr
