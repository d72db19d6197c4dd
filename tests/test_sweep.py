"""Sweeps: one summary for the whole multirun, failed jobs listed with their error, real launcher plugins."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from gemma_run.sweep.summary import collect, write


def _sweep_dir(root: Path) -> Path:
    (sweep,) = [p for p in (root / "multirun").glob("*/*") if p.is_dir()]
    return sweep


def test_summary_tables_from_job_dirs(tmp_path: Path) -> None:
    for num, (quant, tps, status) in enumerate([("none", 12.5, "ok"), ("4bit", None, "failed")]):
        job = tmp_path / str(num)
        (job / ".hydra").mkdir(parents=True)
        (job / ".hydra" / "overrides.yaml").write_text(f"- quant={quant}\n- prompt=hi\n")
        result = {"status": status, "tokens_per_second": tps}
        if status == "failed":
            result["error"] = "error: bitsandbytes cannot run here\n  fix: quant=none"
        (job / "result.json").write_text(json.dumps(result))
    (tmp_path / "2").mkdir()  # a job killed before it wrote anything
    rows = collect(tmp_path, ["quant"])
    assert [(r.num, r.overrides, r.status) for r in rows] == [
        (0, {"quant": "none"}, "ok"), (1, {"quant": "4bit"}, "failed"), (2, {}, "no result")]
    written = write(tmp_path, rows, ["tokens_per_second"], None)
    table = list(csv.reader(written["csv"].open()))
    assert table[0] == ["job", "quant", "status", "tokens_per_second", "error"]
    assert table[1] == ["0", "none", "ok", "12.5", ""]
    assert table[2][2:] == ["failed", "", "error: bitsandbytes cannot run here"]
    assert "3 jobs, 1 ok, 2 failed" in written["md"].read_text()
    assert written["png"].read_bytes()[:4] == b"\x89PNG"


@pytest.mark.slow
def test_failed_job_is_summarised_and_the_others_kept(cli, tmp_path: Path) -> None:
    proc = cli("-m", "generation.max_new_tokens=2,0")
    assert proc.returncode != 0  # a job failed
    assert "Traceback" not in proc.stdout + proc.stderr
    sweep = _sweep_dir(tmp_path)
    md = (sweep / "summary.md").read_text()
    assert "2 jobs, 1 ok, 1 failed" in md and "generation.max_new_tokens=0 must be > 0" in md
    ok = json.loads((sweep / "0" / "result.json").read_text())
    assert ok["status"] == "ok" and ok["new_tokens"] > 0
    assert (sweep / "0" / "generations.jsonl").is_file()
    assert (sweep / "summary.png").is_file() and (sweep / "summary.csv").is_file()


@pytest.mark.slow
def test_submitit_local_launcher_runs_jobs_in_their_own_processes(cli, tmp_path: Path) -> None:
    proc = cli("-m", "hydra/launcher=local_jobs", "seed=0,1", "generation.max_new_tokens=2")
    assert proc.returncode == 0, proc.stderr
    sweep = _sweep_dir(tmp_path)
    assert "Submitit 'local' sweep" in proc.stderr
    for num in ("0", "1"):
        assert json.loads((sweep / num / "result.json").read_text())["status"] == "ok"
    assert list((sweep / ".submitit").glob("*/*_log.out"))  # submitit's own per-job process logs
    assert "2 jobs, 2 ok, 0 failed" in (sweep / "summary.md").read_text()


@pytest.mark.slow
def test_joblib_launcher_runs_jobs_in_parallel_processes(cli, tmp_path: Path) -> None:
    proc = cli("-m", "hydra/launcher=parallel", "seed=0,1", "generation.max_new_tokens=2")
    assert proc.returncode == 0, proc.stderr
    assert "Joblib.Parallel" in proc.stderr
    assert "2 jobs, 2 ok, 0 failed" in (_sweep_dir(tmp_path) / "summary.md").read_text()


def test_sweep_over_an_unknown_key_fails_before_any_job(cli, tmp_path: Path) -> None:
    proc = cli("-m", "generation.max_new_tokenz=1,2")
    assert proc.returncode == 2 and "did you mean `generation.max_new_tokens`" in proc.stderr
    assert not (tmp_path / "multirun").exists()


@pytest.mark.slow
def test_optuna_learning_rate_search_on_the_tiny_model(cli, tmp_path: Path) -> None:
    rows = [{"instruction": f"Say {w}", "input": "", "output": f"{w} {w}"} for w in "one two three four".split()]
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    proc = cli("-m", "hydra/sweeper=lr_search", "hydra.sweeper.n_trials=3", "task=train",
               f"data.train_file={tmp_path / 'train.jsonl'}", "train.max_steps=2", "train.max_seq_length=64",
               "objective=train_loss")
    assert proc.returncode == 0, proc.stderr
    assert "Best parameters: {'train.learning_rate'" in proc.stderr
    sweep = _sweep_dir(tmp_path)
    table = list(csv.reader((sweep / "summary.csv").open()))
    assert table[0][:2] == ["job", "train.learning_rate"] and len(table) == 4
    rates = {float(row[1]) for row in table[1:]}
    assert len(rates) == 3 and all(1e-5 <= r <= 1e-2 for r in rates)  # three different trials in the range
    assert "best_value" in (sweep / "optimization_results.yaml").read_text()


def test_objective_must_name_a_number_in_the_result() -> None:
    from omegaconf import OmegaConf

    from gemma_run.app.errors import GemmaRunError
    from gemma_run.app.pipeline import objective_value

    cfg = OmegaConf.create({"objective": "train_loss"})
    assert objective_value(cfg, {"train_loss": 1.5, "status": "ok"}) == 1.5
    assert objective_value(cfg, None) != objective_value(cfg, None)  # NaN: a failed trial
    with pytest.raises(GemmaRunError, match="one of: seconds"):
        objective_value(cfg, {"loss": "x", "seconds": 2.0})
