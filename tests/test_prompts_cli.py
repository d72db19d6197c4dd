"""Prompts as a user types them: any text for the free-text keys, standard input, a file, and relative paths
with hydra.job.chdir=true. Each prompt is checked where the user would look: generations.jsonl of the run."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml
from helpers.runs import run_dirs
from omegaconf import OmegaConf

FAST = ("generation.max_new_tokens=2",)

PROMPTS = {
    "apostrophe": "What's up?",
    "comma": "Hello, how are you?",
    "braces": "{}",
    "equals": "=",
    "parentheses": "( )",
    "brackets": "[ ]",
    "interpolation": "Use ${HOME}",
    "quotes_and_backslashes": 'She said "hi" and \'bye\' \\ C:\\dir\\ \\\'q\\\' \\${x} end\\',
}


def _records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "generations.jsonl").read_text().splitlines()]


def _only_run(root: Path) -> Path:
    (run,) = run_dirs(root)
    return run


def _first_line(proc) -> str:
    return proc.stderr.strip().splitlines()[0]


@pytest.mark.parametrize("text", PROMPTS.values(), ids=PROMPTS.keys())
def test_prompt_is_composed_exactly(cli, text: str) -> None:
    """What the run would use (`--cfg job --resolve` parses as a run does, without loading a model)."""
    proc = cli("--cfg", "job", "--resolve", f"prompt={text}")
    assert proc.returncode == 0, proc.stderr
    assert yaml.safe_load(proc.stdout)["prompt"] == text


@pytest.mark.slow
def test_prompt_reaches_the_model_exactly(cli, tmp_path: Path) -> None:
    """Every punctuation case above in one prompt, checked where the user looks: generations.jsonl."""
    text = " | ".join(PROMPTS.values())
    proc = cli(f"prompt={text}", *FAST)
    assert proc.returncode == 0, proc.stderr
    (record,) = _records(_only_run(tmp_path))
    assert record["prompt"] == text


@pytest.mark.slow
def test_system_prompt_is_taken_verbatim(cli, tmp_path: Path) -> None:
    proc = cli("prompt=Hi, there", "chat=true", "system_prompt=Be brief, don't ramble; ${HOME} stays", *FAST)
    assert proc.returncode == 0, proc.stderr
    saved = OmegaConf.load(_only_run(tmp_path) / ".hydra" / "config.yaml")
    assert saved.system_prompt == "Be brief, don't ramble; ${HOME} stays" and saved.prompt == "Hi, there"


@pytest.mark.slow
def test_prompt_from_standard_input(cli, tmp_path: Path) -> None:
    text = "Piped, with 'quotes' and ${HOME}\nand a second line"
    proc = cli("prompt=-", *FAST, input=text + "\n")
    assert proc.returncode == 0, proc.stderr
    (record,) = _records(_only_run(tmp_path))
    assert record["prompt"] == text  # echo's final newline dropped, the rest exact


def test_empty_standard_input_is_refused_naming_prompt(cli, tmp_path: Path) -> None:
    proc = cli("prompt=-", *FAST, input="")
    assert proc.returncode == 2
    assert _first_line(proc) == "error: prompt=-: standard input is empty"
    assert "at:  prompt" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "outputs").exists()


@pytest.mark.slow
def test_prompt_from_a_file(cli, tmp_path: Path) -> None:
    text = "From a file, with [brackets] = {braces}\nline two: What's up?"
    (tmp_path / "prompt.txt").write_text(text + "\n", encoding="utf-8")
    proc = cli("prompt=@prompt.txt", *FAST)
    assert proc.returncode == 0, proc.stderr
    (record,) = _records(_only_run(tmp_path))
    assert record["prompt"] == text


def test_missing_prompt_file_is_named(cli, tmp_path: Path) -> None:
    proc = cli("prompt=@nope.txt", *FAST)
    assert proc.returncode == 2
    assert _first_line(proc) == f"error: prompt=@nope.txt: {tmp_path.resolve() / 'nope.txt'} does not exist"
    assert not (tmp_path / "outputs").exists()


def test_free_text_keys_in_the_printed_config(cli) -> None:
    """--cfg job shows what a run would use: @@ keeps a leading @, a stop string with a comma stays one string,
    and a list in Hydra's grammar is still a list; other keys keep Hydra's grammar."""
    proc = cli("--cfg", "job", "prompt=@@handle, hi", "generation.stop=User: ###, end", "batch_size=2")
    assert proc.returncode == 0, proc.stderr
    shown = yaml.safe_load(proc.stdout)
    assert shown["prompt"] == "@handle, hi" and shown["generation"]["stop"] == ["User: ###, end"]
    assert shown["batch_size"] == 2
    listed = cli("--cfg", "job", "generation.stop=[a, 'b c']")
    assert yaml.safe_load(listed.stdout)["generation"]["stop"] == ["a", "b c"], listed.stderr


@pytest.mark.slow
def test_a_comma_in_a_prompt_is_not_a_sweep(cli, tmp_path: Path) -> None:
    proc = cli("-m", "prompt=Hello, how are you?", *FAST)
    assert proc.returncode == 0, proc.stderr
    (sweep,) = [p for p in (tmp_path / "multirun").glob("*/*") if p.is_dir()]
    jobs = [p for p in sweep.iterdir() if p.is_dir() and p.name.isdigit()]
    assert [j.name for j in jobs] == ["0"]
    (record,) = _records(jobs[0])
    assert record["prompt"] == "Hello, how are you?"


def test_compose_takes_free_text_verbatim(compose_cfg) -> None:
    cfg = compose_cfg(["prompt=Hello, what's ${HOME}?", "system_prompt='quoted for Hydra'"])
    assert cfg.prompt == "Hello, what's ${HOME}?"
    assert cfg.system_prompt == "quoted for Hydra"  # compose() callers may still quote for Hydra themselves


# hydra.job.chdir=true: the job runs in its run dir; relative paths still name files of the start directory.

@pytest.mark.slow
def test_chdir_keeps_a_relative_prompts_file(cli, tmp_path: Path) -> None:
    (tmp_path / "prompts.txt").write_text("first\nsecond, with a comma\n")
    proc = cli("hydra.job.chdir=true", "prompts_file=prompts.txt", *FAST)
    assert proc.returncode == 0, proc.stderr
    assert [r["prompt"] for r in _records(_only_run(tmp_path))] == ["first", "second, with a comma"]


@pytest.mark.slow
def test_chdir_keeps_a_relative_train_file(cli, tmp_path: Path) -> None:
    rows = [{"instruction": f"Say {w}", "input": "", "output": f"{w} {w}"} for w in "one two three four".split()]
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    proc = cli("hydra.job.chdir=true", "task=train", "data.train_file=train.jsonl", "train.max_steps=2",
               "train.logging_steps=1", "train.max_seq_length=128")
    assert proc.returncode == 0, proc.stderr
    result = json.loads((_only_run(tmp_path) / "result.json").read_text())
    assert result["status"] == "ok"


@pytest.mark.slow
def test_chdir_keeps_a_relative_model_path(cli, compose_cfg, tmp_path: Path) -> None:
    from gemma_run.loading.checkpoint import resolve

    built = resolve(compose_cfg().model, compose_cfg().cache_dir)  # the tiny model's checkpoint dir
    shutil.copytree(built, tmp_path / "ckpt")
    proc = cli("hydra.job.chdir=true", "model.weights=pretrained", "model.path=ckpt", "prompt=Hi", *FAST)
    assert proc.returncode == 0, proc.stderr
    run = _only_run(tmp_path)
    result = json.loads((run / "result.json").read_text())
    assert result["status"] == "ok" and Path(result["checkpoint"]).resolve() == (tmp_path / "ckpt").resolve()
    assert _records(run)[0]["prompt"] == "Hi"


def test_unparsable_value_of_another_key_names_the_quoting(cli) -> None:
    proc = cli("--cfg", "job", "objective=What's up")
    assert proc.returncode == 2
    assert _first_line(proc).startswith("error: cannot parse the overrides: LexerNoViableAltException")
    assert """fix: quote the value for Hydra inside the shell's quotes: key="'a value, with commas'\"""" in proc.stderr
    assert "objective" in proc.stderr


@pytest.mark.parametrize("text", ["Use ${HOME}", "a \\${x} b", "\\\\${y}", "plain, (text) [x] {z} = 'q'"])
def test_ranks_read_free_text_as_given(compose_cfg, tmp_path: Path, text: str) -> None:
    """Every rank of a launched run reads the resolved config the launcher wrote: a prompt keeps its text."""
    from gemma_run.distributed.launch import write_config
    from gemma_run.distributed.worker import read_config

    cfg = compose_cfg([f"prompt={text}", f"system_prompt={text}"])
    write_config(cfg, tmp_path)
    read = read_config(tmp_path)
    assert read.prompt == text and read.system_prompt == text
