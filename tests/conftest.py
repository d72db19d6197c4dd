"""Shared fixtures: composed configs, a shared cache for random-weight models, and the CLI in a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest


def pytest_configure(config: pytest.Config) -> None:
    """Under pytest-xdist (`-n N`), each worker's torch gets its share of the cores, not all of them: N workers
    of all-core thread pools would oversubscribe the machine. Set before any test imports torch; an
    OMP_NUM_THREADS the user set wins. Subprocesses started through `cli` run with one thread either way."""
    workers = os.environ.get("PYTEST_XDIST_WORKER_COUNT")
    if workers:
        os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // int(workers))))


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One cache for the whole session, so the tiny model is built once. GEMMA_RUN_TEST_CACHE reuses one."""
    given = os.environ.get("GEMMA_RUN_TEST_CACHE")
    path = Path(given) if given else tmp_path_factory.mktemp("gemma-run-cache")
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture
def compose_cfg(cache_dir: Path):
    """compose_cfg(["quant=8bit", ...]) -> the run config, exactly as the CLI composes it."""
    from gemma_run import compose

    def _compose(overrides: list[str] | None = None):
        return compose([f"cache_dir={cache_dir}", *(overrides or [])])

    return _compose


@pytest.fixture
def cli(cache_dir: Path, tmp_path: Path):
    """cli("prompt=hi", ...) runs `gemma-run` in a subprocess in tmp_path; returns CompletedProcess.
    ``input`` is piped to its standard input."""

    def _cli(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None, timeout: float = 600,
             input: str | None = None):
        full_env = {**os.environ, "GEMMA_RUN_CACHE": str(cache_dir), "OMP_NUM_THREADS": "1", **(env or {})}
        full_env.pop("HYDRA_FULL_ERROR", None)
        return subprocess.run(
            [sys.executable, "-m", "gemma_run.app.cli", *args], cwd=cwd or tmp_path, env=full_env,
            capture_output=True, text=True, timeout=timeout, input=input,
        )

    return _cli

