"""A batch file run killed with SIGKILL mid-run (a real `gemma-run` subprocess), then resumed in the same run
dir (found by resume=auto, which picks the newest interrupted run): every prompt answered exactly once, in input
order; resuming the finished run by its path does nothing."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from helpers.runs import run_dirs

N_PROMPTS = 200


def _lines(path) -> list[str]:
    return path.read_text().splitlines() if path.is_file() else []


@pytest.mark.slow
def test_sigkill_mid_run_then_resume_answers_each_prompt_once(cli, cache_dir, tmp_path):
    prompts = [f"prompt number {i}: " + "count " * (i % 7) for i in range(N_PROMPTS)]
    pfile = tmp_path / "prompts.txt"
    pfile.write_text("\n".join(prompts) + "\n")
    args = [f"prompts_file={pfile}", "batch_size=1", "generation.max_new_tokens=16"]
    env = {**os.environ, "GEMMA_RUN_CACHE": str(cache_dir), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "gemma_run.app.cli", *args], cwd=tmp_path, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    gen = None
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            dirs = run_dirs(tmp_path)
            gen = dirs[-1] / "generations.jsonl" if dirs else None
            if gen is not None and len(_lines(gen)) >= 5:
                break
            time.sleep(0.02)
        assert proc.poll() is None, "the run ended before it could be killed: give it more prompts"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    (run_dir,) = run_dirs(tmp_path)
    done_before = len(_lines(gen))
    assert 5 <= done_before < N_PROMPTS

    resumed = cli(*args, "resume=auto")
    assert resumed.returncode == 0, resumed.stderr
    assert run_dirs(tmp_path) == [run_dir]  # continued in the same dir
    records = [json.loads(line) for line in _lines(gen)]
    assert [r["index"] for r in records] == list(range(N_PROMPTS))  # each exactly once, input order
    assert [r["prompt"] for r in records] == prompts
    result = json.loads((run_dir / "result.json").read_text())
    assert result["status"] == "ok"
    assert result["skipped"] >= done_before - 1  # a line torn by the kill is generated again
    assert result["skipped"] + result["generated"] == N_PROMPTS

    again = cli(*args, f"resume={run_dir}")
    assert again.returncode == 0, again.stderr
    assert json.loads((run_dir / "result.json").read_text())["generated"] == 0
    assert [json.loads(line) for line in _lines(gen)] == records
