"""A run dir belongs to one live run: a second run there is refused naming the first, a lock left by a killed run is
taken over, two runs started in the same second get two dirs (and keep their generations), resume=auto reads the
new names, and `--cfg hydra --resolve` shows the run dir."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers.runs import REPO

from gemma_run.app.errors import GemmaRunError
from gemma_run.app.run_lock import LOCK

RUN = ["generation.max_new_tokens=2"]
# hydra.run.dir as gemma_run/conf/config.yaml builds it, with the clock fixed: two runs started "in the same second"
SAME_SECOND = "hydra.run.dir='${gr_run_dir:${oc.select:resume,null},${oc.select:task.name,null},outputs/day/12-00-00}'"


def start(cache_dir: Path, cwd: Path, *args: str) -> subprocess.Popen:
    env = {**os.environ, "GEMMA_RUN_CACHE": str(cache_dir), "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    env.pop("HYDRA_FULL_ERROR", None)
    return subprocess.Popen([sys.executable, "-m", "gemma_run.app.cli", *args], cwd=cwd, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def holder_of(lock: Path, timeout: float = 120) -> int | None:
    """The pid written in ``lock`` once it is there."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            return json.loads(lock.read_text())["pid"]
        except (OSError, ValueError, KeyError):
            time.sleep(0.05)
    return None


def hold_in_child(run_dir: Path) -> subprocess.Popen:
    """Another process holding ``run_dir``'s lock (as a live gemma-run does) until it is killed."""
    code = ("import sys, time; from gemma_run.app import run_lock; run_lock.acquire(sys.argv[1]); "
            "print('held', flush=True); time.sleep(300)")
    child = subprocess.Popen([sys.executable, "-c", code, str(run_dir)], stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "held"
    return child


def error_line(stderr: str) -> str:
    return next(line for line in stderr.splitlines() if line.startswith("error:"))


def prompts(run_dir: Path) -> list[str]:
    return [json.loads(line)["prompt"] for line in (run_dir / "generations.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_second_run_in_a_live_run_dir_is_refused_naming_the_first(cli, cache_dir: Path, tmp_path: Path) -> None:
    release = tmp_path / "release"
    hold = f"+plugins.hold={{_target_:tests.helpers.wait_plugin.WaitForFile,order:5,path:'{release}'}}"
    first = start(cache_dir, tmp_path, "hydra.run.dir=shared", "prompt=first", *RUN, hold)
    try:
        assert holder_of(tmp_path / "shared" / LOCK) == first.pid
        second = cli("hydra.run.dir=shared", "prompt=second", *RUN)
    finally:
        release.touch()
        _, first_err = first.communicate(timeout=300)
    assert first.returncode == 0, first_err[-3000:]
    assert second.returncode == 2, second.stderr[-3000:]
    line = error_line(second.stderr)
    assert line.startswith(f"error: run dir shared is in use by another gemma-run: pid {first.pid} on this machine")
    assert ": gemma-run hydra.run.dir=shared prompt=first generation.max_new_tokens=2 " in line  # its command
    assert "fix: wait for pid" in second.stderr and "hydra.run.dir=" in second.stderr
    shared = tmp_path / "shared"
    assert prompts(shared) == ["first"]  # the second run wrote nothing there: not its answer, not its config
    assert "prompt=second" not in (shared / ".hydra" / "overrides.yaml").read_text()
    assert not (shared / LOCK).exists()  # released at the end


@pytest.mark.slow
def test_a_lock_left_by_a_killed_run_is_taken_over(cli, tmp_path: Path) -> None:
    child = hold_in_child(tmp_path / "run")
    child.kill()
    child.wait()
    assert holder_of(tmp_path / "run" / LOCK) == child.pid  # its file stays; its lock went with it
    proc = cli("hydra.run.dir=run", *RUN)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"taking over the lock left by pid {child.pid}" in proc.stderr
    assert prompts(tmp_path / "run") == ["Hello"] and not (tmp_path / "run" / LOCK).exists()


@pytest.mark.slow
def test_python_api_refuses_a_dir_a_live_process_holds(compose_cfg, tmp_path: Path) -> None:
    from gemma_run import run

    child = hold_in_child(tmp_path / "run")
    try:
        with pytest.raises(GemmaRunError, match=f"in use by another gemma-run: pid {child.pid} "):
            run(compose_cfg(RUN), tmp_path / "run")
    finally:
        child.kill()
        child.wait()
    assert run(compose_cfg(RUN), tmp_path / "run")["status"] == "ok"


@pytest.mark.slow
def test_two_runs_started_in_the_same_second_get_two_dirs(cache_dir: Path, tmp_path: Path) -> None:
    procs = [start(cache_dir, tmp_path, SAME_SECOND, f"prompt={name}", *RUN) for name in ("first", "second")]
    for proc in procs:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-3000:]
    dirs = sorted(p.name for p in (tmp_path / "outputs" / "day").iterdir())
    assert dirs == ["12-00-00", "12-00-00_2"]
    got = sorted(prompt for d in dirs for prompt in prompts(tmp_path / "outputs" / "day" / d))
    assert got == ["first", "second"]  # each dir holds its own run's generation, none lost


def test_resume_auto_picks_the_newest_of_same_second_dirs(tmp_path: Path) -> None:
    from gemma_run.app.resolvers import newest_run_dir

    for name in ("12-00-00", "12-00-00_2", "12-00-00_10", "11-59-59"):
        run_dir = tmp_path / "outputs" / "day" / name
        (run_dir / ".hydra").mkdir(parents=True)
        (run_dir / ".hydra" / "config.yaml").write_text("task:\n  name: infer\n")
        (run_dir / "generations.jsonl").write_text("")
    assert newest_run_dir(tmp_path / "outputs", "infer").name == "12-00-00_10"


def test_cfg_hydra_resolve_shows_the_run_dir(cli, tmp_path: Path) -> None:
    proc = cli("--cfg", "hydra", "--resolve")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "    dir: outputs/" in proc.stdout and "output_subdir: .hydra" in proc.stdout
    assert not (tmp_path / "outputs").exists()  # printing the config creates no run dir
