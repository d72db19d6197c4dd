"""The plugin pipeline in order, user plugins through config, and the Python API."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gemma_run.app.errors import ConfigError
from gemma_run.app.plugins import build_pipeline


def test_plugins_run_in_documented_order(compose_cfg) -> None:
    cfg = compose_cfg()
    orders = [order for _, order, _ in build_pipeline(cfg.plugins)]
    assert orders == sorted(orders)
    names = [name for name, _, _ in build_pipeline(cfg.plugins)]
    assert names.index("validate") < names.index("env") < names.index("shims") < names.index("dispatch")
    assert names[-1] == "dispatch"


def test_user_plugin_runs_at_its_order(compose_cfg, tmp_path: Path) -> None:
    from gemma_run import run

    log = tmp_path / "calls.txt"
    cfg = compose_cfg([
        f"+plugins.late={{_target_:tests.helpers.probe_plugin.Recorder,order:200,tag:late,out:'{log}'}}",
        f"+plugins.early={{_target_:tests.helpers.probe_plugin.Recorder,order:15,tag:early,out:'{log}'}}",
        "~plugins.dispatch",
    ])
    result = run(cfg, tmp_path)
    assert log.read_text().split() == ["early", "late"]
    assert result["status"] == "ok"
    assert json.loads((tmp_path / "result.json").read_text())["status"] == "ok"


def test_plugin_without_target_is_named(compose_cfg) -> None:
    cfg = compose_cfg(["+plugins.bad={order:5}"])
    with pytest.raises(ConfigError, match=r"plugins\.bad"):
        build_pipeline(cfg.plugins)


def test_python_api_runs_the_tiny_model(compose_cfg, tmp_path: Path) -> None:
    from gemma_run import run

    cfg = compose_cfg(["prompt=Hello", "generation.max_new_tokens=4"])
    result = run(cfg, tmp_path)
    assert result["status"] == "ok" and result["task"] == "infer"
    lines = (tmp_path / "generations.jsonl").read_text().splitlines()
    assert len(lines) == 1 and json.loads(lines[0])["prompt"] == "Hello"


def test_failure_is_recorded_in_result_json(compose_cfg, tmp_path: Path) -> None:
    from gemma_run import run
    from gemma_run.app.errors import GemmaRunError

    cfg = compose_cfg(["model.weights=pretrained", "model.path=/nonexistent/model"])
    with pytest.raises(GemmaRunError, match=r"model\.path"):
        run(cfg, tmp_path)
    saved = json.loads((tmp_path / "result.json").read_text())
    assert saved["status"] == "failed" and "/nonexistent/model" in saved["error"]
