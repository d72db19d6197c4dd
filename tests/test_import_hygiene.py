"""`gemma-run --help`, `--cfg job` and `--info` answer without importing torch or transformers."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

HEAVY = ("torch", "transformers", "peft", "deepspeed", "bitsandbytes")

PROBE = """
import atexit, json, sys
atexit.register(lambda: print("MODULES=" + json.dumps(sorted(m for m in {heavy!r} if m in sys.modules))))
sys.argv = ["gemma-run", *{args!r}]
from gemma_run.app.cli import main
main()
"""


@pytest.mark.parametrize("args", [["--help"], ["--cfg", "job"], ["--info"], ["--cfg", "job", "quant=4bit",
                                                                             "model=gemma3_27b"]])
def test_no_heavy_imports(args: list[str], tmp_path) -> None:
    code = PROBE.format(heavy=HEAVY, args=args)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=60)
    assert proc.returncode == 0, proc.stderr
    line = [x for x in proc.stdout.splitlines() if x.startswith("MODULES=")][-1]
    assert json.loads(line.removeprefix("MODULES=")) == []


def test_importing_the_package_is_light() -> None:
    code = "import sys, gemma_run, gemma_run.app.cli, gemma_run.app.pipeline, gemma_run.app.plugins, " \
           f"gemma_run.patches, gemma_run.patches.registry; print([m for m in {HEAVY!r} if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60).stdout
    assert out.strip() == "[]"


def test_info_lists_the_config_groups(tmp_path) -> None:
    proc = subprocess.run([sys.executable, "-m", "gemma_run.app.cli", "--info", "config"], capture_output=True,
                          text=True, cwd=tmp_path, timeout=60)
    assert proc.returncode == 0
    for group in ("model", "quant", "device_map", "env", "task"):
        assert group in proc.stdout
