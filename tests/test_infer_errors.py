"""Every bad input of task=infer through the real CLI: one clear message naming the key or file(:line) and the
fix, a non-zero exit, and nothing already written lost: the cases that do not change the prompts resume an
interrupted run dir (2 of 3 prompts done) and must leave its generations.jsonl byte for byte as it was."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from helpers.runs import run_dirs

FAST = "generation.max_new_tokens=4"


@pytest.fixture(scope="module")
def interrupted_run(tmp_path_factory, cache_dir):
    """A run dir with two of its three prompts answered (made once), and its prompts file."""
    import os
    import subprocess
    import sys

    root = tmp_path_factory.mktemp("finished")
    prompts = root / "p.txt"
    prompts.write_text("one\ntwo\nthree\n")
    env = {**os.environ, "GEMMA_RUN_CACHE": str(cache_dir), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "gemma_run.app.cli", f"prompts_file={prompts}", FAST], cwd=root,
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    (run_dir,) = run_dirs(root)
    lines = (run_dir / "generations.jsonl").read_text().splitlines()
    assert len(lines) == 3
    (run_dir / "generations.jsonl").write_text("\n".join(lines[:2]) + "\n")  # as if killed before the third
    return run_dir, prompts


def _pickle_only(root: Path, cache_dir: Path) -> Path:
    ckpt = root / "pickle_ckpt"
    ckpt.mkdir()
    src = next((cache_dir / "random").glob("tiny_gemma3-*"))
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        shutil.copy(src / name, ckpt / name)
    (ckpt / "pytorch_model.bin").write_bytes(b"not really a pickle")
    return ckpt


def _cases(root: Path, cache_dir: Path) -> dict[str, tuple[list[str], str, list[str], dict[str, str]]]:
    """name -> (args, the key the message names, words it must contain, extra env). Cases whose args start with
    prompts_file/prompt are new runs; the others resume the interrupted run."""
    bad = root / "bad.jsonl"
    bad.write_text('{"prompt": "fine"}\n{"prompt": "oops",}\n')
    long = root / "long.txt"
    long.write_text("hello " * 600 + "\n")
    fake_bnb = root / "fake_bnb" / "bitsandbytes"
    fake_bnb.mkdir(parents=True)
    (fake_bnb / "__init__.py").write_text('raise ImportError("simulated: no bitsandbytes backend here")\n')
    every_module = "model.embed_tokens:cpu,model.layers:cpu,model.norm:cpu,model.rotary_emb:cpu,lm_head:cpu"
    return {
        "missing_prompts_file": ([f"prompts_file={root / 'nope.txt'}"], "prompts_file", ["does not exist"], {}),
        "malformed_jsonl_line": ([f"prompts_file={bad}"], f"{bad}:2", ["malformed JSON"], {}),
        "empty_prompt": (["prompt="], "prompt", ["prompt is empty"], {}),
        "prompt_longer_than_context": ([f"prompts_file={long}"], f"{long}:1", ["context of 512"], {}),
        "max_new_tokens_zero": (["generation.max_new_tokens=0"], "generation.max_new_tokens", ["must be > 0"], {}),
        "max_new_tokens_past_context": (["generation.max_new_tokens=600"], "p.txt:3", ["context of 512"], {}),
        "map_names_missing_gpu": (["device_map=explicit", "+device_map.map={" + every_module.replace(
            "model.layers:cpu", "model.layers:3") + "}"], "device_map.map.model.layers", ["GPU 3"], {}),
        "map_leaves_modules_unmapped": (["device_map=explicit", "+device_map.map={model.embed_tokens:cpu,"
                                         "model.layers:cpu}"], "device_map.map", ["unmapped", "lm_head", "model.norm"],
                                        {}),
        "4bit_without_bitsandbytes": (["quant=4bit"], "quant", ["bitsandbytes", "pip install"],
                                      {"PYTHONPATH": str(fake_bnb.parent)}),
        "pickle_only_checkpoint": (["model.weights=pretrained", f"model.path={_pickle_only(root, cache_dir)}"],
                                   "model.allow_pickle", ["CVE-2025-32434", "torch.load"], {}),
        "missing_local_dir": (["model.weights=pretrained", f"model.path={root / 'no_such_ckpt'}"], "model.path",
                              ["does not exist"], {}),
        "hub_id_not_in_cache": (["model=gemma3_1b"], "model.hub_id", ["looked in", "hf download"],
                                {"HF_HOME": str(root / "empty_hf_home"), "HF_HUB_OFFLINE": "1"}),
    }


CASES = [
    "missing_prompts_file", "malformed_jsonl_line", "empty_prompt", "prompt_longer_than_context",
    "max_new_tokens_zero", "max_new_tokens_past_context", "map_names_missing_gpu", "map_leaves_modules_unmapped",
    "4bit_without_bitsandbytes", "pickle_only_checkpoint", "missing_local_dir", "hub_id_not_in_cache",
]


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES)
def test_bad_input_is_one_clear_message_and_loses_nothing(cli, interrupted_run, tmp_path, cache_dir, case):
    run_dir, prompts = interrupted_run
    args, key, words, env = _cases(tmp_path, cache_dir)[case]
    resumed = tmp_path / "resumed"
    shutil.copytree(run_dir, resumed)
    before = (resumed / "generations.jsonl").read_bytes()
    result_before = (resumed / "result.json").read_bytes() if (resumed / "result.json").is_file() else None
    fresh = args[0].startswith(("prompts_file=", "prompt="))
    fast = [] if any(a.startswith("generation.max_new_tokens") for a in args) else [FAST]
    if fresh:
        done = cli(*args, *fast, env=env)
    else:
        done = cli(f"prompts_file={prompts}", f"resume={resumed}", *args, *fast, env=env)
    assert done.returncode != 0, done.stdout
    message = done.stderr[done.stderr.rfind("error:"):]
    at_line = next((line for line in message.splitlines() if line.strip().startswith("at:")), "")
    assert at_line.endswith(key), message
    assert "fix: " in message and "Traceback" not in done.stderr, done.stderr
    for word in words:
        assert word in message, message
    assert (resumed / "generations.jsonl").read_bytes() == before
    if fresh:
        assert not list(tmp_path.glob("outputs/*/*/generations.jsonl"))  # refused before the first prompt
    else:
        # the failed attempt is recorded beside the run's own record, which stays as it was
        assert json.loads((resumed / "result.failed.json").read_text())["status"] == "failed"
        if result_before is not None:
            assert (resumed / "result.json").read_bytes() == result_before
