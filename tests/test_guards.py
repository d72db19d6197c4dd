"""Behaviour at the edges that a small slip would break without any other test noticing: checkpoint checksums on
resume, env.override and secrets in its log line, the KV cache in a device's planned total, prompt masking and
completion_only_loss in training data, safetensors-only loading, killed sweep jobs, infer resume, exit codes and
the preflight refusal.
scripts/mutation_audit.py (tests/mutations.yaml) checks that each of these tests fails when its bug is put in."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from helpers.runs import run_dirs

from gemma_run.app.errors import GemmaRunError

GiB = 2**30


# --- checkpoints: what resume accepts ------------------------------------------------------------------------------

def _checkpoint(out: Path, step: int, marked: bool = True) -> Path:
    from gemma_run.training import checkpoint_integrity as checkpoints

    ckpt = out / f"checkpoint-{step}"
    ckpt.mkdir(parents=True)
    (ckpt / "adapter_model.safetensors").write_bytes(bytes(range(256)) * 16)
    (ckpt / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    if marked:
        checkpoints.mark_complete(ckpt, step)
    return ckpt


def test_resume_skips_a_checkpoint_whose_file_changed_but_kept_its_size(tmp_path: Path) -> None:
    from gemma_run.training.checkpoint_integrity import find_resume

    out = tmp_path / "run"
    _checkpoint(out, 2)
    weights = _checkpoint(out, 4) / "adapter_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[100] ^= 0xFF  # one flipped byte: same size, other content
    weights.write_bytes(bytes(data))
    point = find_resume(out)
    assert (point.checkpoint.name, point.step) == ("checkpoint-2", 2)
    ((moved, why),) = point.skipped
    assert moved.name == "incomplete-checkpoint-4" and moved.is_dir()
    assert why == "adapter_model.safetensors does not match its checksum"


def test_resume_skips_a_checkpoint_without_its_completion_marker(tmp_path: Path) -> None:
    from gemma_run.training.checkpoint_integrity import find_resume

    out = tmp_path / "run"
    _checkpoint(out, 2)
    _checkpoint(out, 4, marked=False)  # the save was killed before the marker was written
    point = find_resume(out)
    assert point.checkpoint.name == "checkpoint-2"
    ((moved, why),) = point.skipped
    assert moved.name == "incomplete-checkpoint-4" and "no completion marker" in why


# --- env: override and secrets ------------------------------------------------------------------------------------

def _export_env(compose_cfg, tmp_path: Path, *overrides: str) -> dict:
    from gemma_run.app.context import RunContext
    from gemma_run.app.plugins import ExportEnv

    ctx = RunContext(cfg=compose_cfg(list(overrides)), run_dir=tmp_path)
    ExportEnv()(ctx)
    return ctx.result


def test_env_override_false_keeps_the_users_own_value(compose_cfg, tmp_path: Path, monkeypatch, caplog) -> None:
    import os

    monkeypatch.setenv("NCCL_DEBUG", "INFO")  # the user's own value
    monkeypatch.delenv("NCCL_SOCKET_IFNAME", raising=False)
    with caplog.at_level(logging.INFO, logger="gemma_run"):
        result = _export_env(compose_cfg, tmp_path, "+env.vars.NCCL_DEBUG=WARN", "+env.vars.NCCL_SOCKET_IFNAME=lo")
    assert os.environ["NCCL_DEBUG"] == "INFO" and result["env"]["NCCL_DEBUG"] == "INFO"
    assert os.environ["NCCL_SOCKET_IFNAME"] == "lo"  # an unset variable is still set
    assert "NCCL_DEBUG=INFO (already set; env.override=false keeps it)" in caplog.text


def test_env_override_true_replaces_the_users_value(compose_cfg, tmp_path: Path, monkeypatch, caplog) -> None:
    import os

    monkeypatch.setenv("NCCL_DEBUG", "INFO")
    with caplog.at_level(logging.INFO, logger="gemma_run"):
        result = _export_env(compose_cfg, tmp_path, "+env.vars.NCCL_DEBUG=WARN", "env.override=true")
    assert os.environ["NCCL_DEBUG"] == "WARN" and result["env"]["NCCL_DEBUG"] == "WARN"
    assert "NCCL_DEBUG=WARN (was INFO)" in caplog.text


@pytest.mark.slow
def test_a_secret_replaced_by_env_override_is_never_printed_or_written(cli, tmp_path: Path) -> None:
    """env.override=true replacing a secret the user had set: neither the old nor the new value appears on the
    console, in the log or in any file of the run dir (the ordinary variable beside it shows what it replaced)."""
    proc = cli("+env.vars.HF_TOKEN=hf_newsecret456", "+env.vars.NCCL_DEBUG=WARN", "env.override=true",
               "generation.max_new_tokens=2", env={"HF_TOKEN": "hf_oldsecret123", "NCCL_DEBUG": "INFO"})
    assert proc.returncode == 0, proc.stderr
    assert "NCCL_DEBUG=WARN (was INFO)" in proc.stderr  # the replacement is logged
    (run,) = run_dirs(tmp_path)
    written = "".join(p.read_text(errors="replace") for p in run.rglob("*") if p.is_file())
    for secret in ("hf_oldsecret123", "hf_newsecret456"):
        assert secret not in proc.stdout + proc.stderr + written, secret


# --- the planner: a device's total holds its KV cache -------------------------------------------------------------

@pytest.mark.slow
def test_a_device_total_counts_its_kv_cache_and_a_long_context_can_make_it_not_fit() -> None:
    from importlib import resources

    from omegaconf import OmegaConf

    from gemma_run.planning.plan import PlanInputs, make_plan, with_changes

    text = resources.files("gemma_run.conf").joinpath("model/gemma3_4b.yaml").read_text()
    base = PlanInputs(config=OmegaConf.to_container(OmegaConf.create(text).config), gpus=(80 * GiB,),
                      strategy="single", prompt=128, new_tokens=128)
    long = with_changes(base, new_tokens=100_000)  # the prompt (and so the prefill's activations) unchanged
    short_dev, long_dev = make_plan(base)["devices"]["cuda:0"], make_plan(long)["devices"]["cuda:0"]
    grown = long_dev["kv_cache"] - short_dev["kv_cache"]
    assert grown > GiB and make_plan(long)["kv_cache_bytes"] == long_dev["kv_cache"]
    assert long_dev["total"] - short_dev["total"] == grown  # only the cache grew, and the total with it
    # a GPU with room for the weights and the short run's cache, but not half of what the long context adds
    tight = (short_dev["total"] + grown // 2,)
    assert make_plan(with_changes(base, gpus=tight))["fits"]
    refused = make_plan(with_changes(long, gpus=tight))
    assert not refused["fits"] and refused["problems"][0].startswith("cuda:0 needs ")


# --- training data: what the loss is taken on ---------------------------------------------------------------------

ALPACA = {"instruction": "Count to 3", "input": "slowly", "output": "one two three"}


@pytest.fixture
def train_cfg(compose_cfg, tmp_path: Path):
    rows = [ALPACA, {**ALPACA, "input": ""}]
    data = tmp_path / "alpaca.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))

    def make(*overrides: str):
        return compose_cfg(["task=train", f"data.train_file={data}", "data.eval_split=0", *overrides])

    return make


def _prepared(cfg, template: bool):
    from gemma_run.loading import checkpoint, load_tokenizer
    from gemma_run.training import data

    tok = load_tokenizer(checkpoint.resolve(cfg.model, cfg.cache_dir), cfg.model)
    if not template:
        tok.chat_template = None  # a base model's tokenizer (GPT-2 style): the plain alpaca prompt
    return tok, data.prepare(cfg, tok, data.read_checked(cfg))


def _learned(tok, row) -> str:
    return tok.decode([i for i, label in zip(row["input_ids"], row["labels"], strict=True) if label != -100])


@pytest.mark.parametrize("template", [True, False], ids=["chat-template", "no-chat-template"])
def test_alpaca_prompts_are_masked_and_only_the_response_is_learned(train_cfg, template: bool) -> None:
    tok, prepared = _prepared(train_cfg(), template)
    assert prepared.stats["completion_only_loss"] is True
    row = prepared.train[0]
    text = tok.decode(row["input_ids"])
    assert "Count to 3" in text and "one two three" in text
    learned = _learned(tok, row)
    assert "one two three" in learned
    assert "Count to 3" not in learned and "slowly" not in learned and "Instruction" not in learned
    if not template:
        assert text.count("### Response:") == 1 and learned == "one two three" + tok.eos_token


@pytest.mark.parametrize("template", [True, False], ids=["chat-template", "no-chat-template"])
def test_completion_only_loss_false_learns_every_token(train_cfg, template: bool) -> None:
    tok, prepared = _prepared(train_cfg("data.completion_only_loss=false"), template)
    assert prepared.stats["completion_only_loss"] is False
    for row in prepared.train:
        assert row["labels"] == row["input_ids"]
    assert "Count to 3" in _learned(tok, prepared.train[0])


# --- loading: safetensors only ------------------------------------------------------------------------------------

def test_pickle_weights_beside_a_stray_safetensors_file_are_never_unpickled(compose_cfg, tmp_path: Path,
                                                                            monkeypatch) -> None:
    """A checkpoint whose weights are pytorch_model.bin, with some other *.safetensors file beside it: loading
    must not fall back to the pickle (transformers would torch.load it) unless model.allow_pickle=true."""
    import torch
    from safetensors.torch import save_file

    from gemma_run.loading import load

    loaded = load(compose_cfg())
    ckpt = tmp_path / "pickled"
    loaded.model.save_pretrained(ckpt)
    loaded.tokenizer.save_pretrained(ckpt)
    (ckpt / "model.safetensors").unlink()
    torch.save(loaded.model.state_dict(), ckpt / "pytorch_model.bin")  # the weights as a pickle only
    save_file({"x": torch.zeros(2)}, ckpt / "stray.safetensors")  # e.g. an adapter left in the dir
    unpickled = []
    real_load = torch.load

    def recording_load(*args, **kwargs):
        unpickled.append(args[0] if args else kwargs.get("f"))
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", recording_load)
    with pytest.raises((OSError, GemmaRunError)) as e:  # transformers' "no file named model.safetensors"
        load(compose_cfg(["model.weights=pretrained", f"model.path={ckpt}"]))
    assert "model.safetensors" in str(e.value)
    assert unpickled == []
    allowed = load(compose_cfg(["model.weights=pretrained", f"model.path={ckpt}", "model.allow_pickle=true"]))
    assert unpickled and allowed.model is not None  # the explicit opt-in does read the pickle


# --- sweeps: a job killed before it wrote its result --------------------------------------------------------------

def _sweep_cfg(sweep_dir: Path):
    from omegaconf import OmegaConf

    return OmegaConf.create({"hydra": {"sweep": {"dir": str(sweep_dir)}, "overrides": {"task": ["prompt=a,b"]},
                                       "sweeper": {"params": None}}})


def _job(sweep_dir: Path, num: int, prompt: str, result: dict | None) -> None:
    job = sweep_dir / str(num)
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text(f"- prompt={prompt}\n")
    if result is not None:
        (job / "result.json").write_text(json.dumps(result))


def test_a_sweep_with_a_killed_job_exits_non_zero(tmp_path: Path, capsys) -> None:
    from gemma_run.sweep.callbacks import SweepSummary

    _job(tmp_path, 0, "a", {"status": "ok", "seconds": 1.0})
    _job(tmp_path, 1, "b", None)  # killed: no result.json
    with pytest.raises(SystemExit) as e:
        SweepSummary().on_multirun_end(_sweep_cfg(tmp_path))
    assert e.value.code == 1
    assert "2 jobs, 1 ok, 1 failed" in capsys.readouterr().out
    assert "no result" in (tmp_path / "summary.md").read_text()


def test_a_sweep_whose_jobs_all_finished_exits_zero(tmp_path: Path, capsys) -> None:
    from gemma_run.sweep.callbacks import SweepSummary

    _job(tmp_path, 0, "a", {"status": "ok", "seconds": 1.0})
    _job(tmp_path, 1, "b", {"status": "ok", "seconds": 2.0})
    SweepSummary().on_multirun_end(_sweep_cfg(tmp_path))  # no SystemExit
    assert "2 jobs, 2 ok, 0 failed" in capsys.readouterr().out


# --- infer: resume and exit codes ---------------------------------------------------------------------------------

@pytest.mark.slow
def test_infer_resume_keeps_finished_prompts_and_generates_only_the_rest(compose_cfg, tmp_path: Path) -> None:
    from gemma_run import run

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("one\ntwo\nthree\n")
    run_dir = tmp_path / "run"
    args = [f"prompts_file={prompts}", "generation.max_new_tokens=2", "batch_size=1"]
    run(compose_cfg(args), run_dir)
    gen = run_dir / "generations.jsonl"
    lines = [json.loads(line) for line in gen.read_text().splitlines()]
    lines[0]["completion"] = "KEPT"  # proves the first prompt is not generated again
    gen.write_text("".join(json.dumps(r) + "\n" for r in lines[:2]))  # the run was killed before the third
    result = run(compose_cfg([*args, f"resume={run_dir}"]), run_dir)
    assert (result["skipped"], result["generated"]) == (2, 1)
    again = [json.loads(line) for line in gen.read_text().splitlines()]
    assert [r["index"] for r in again] == [0, 1, 2] and again[0]["completion"] == "KEPT"
    assert again[2]["prompt"] == "three" and again[2]["new_tokens"] > 0


@pytest.mark.slow
def test_a_user_error_exits_2_with_one_message_and_no_traceback(cli) -> None:
    proc = cli("prompt=")
    assert proc.returncode == 2, proc.stderr
    assert "error: prompt is empty" in proc.stderr and "Traceback" not in proc.stderr


def test_infer_resume_with_other_prompts_is_refused_and_keeps_the_file(compose_cfg, tmp_path: Path) -> None:
    from gemma_run import run

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("one\ntwo\n")
    run_dir = tmp_path / "run"
    args = ["generation.max_new_tokens=2", "batch_size=1"]
    run(compose_cfg([f"prompts_file={prompts}", *args]), run_dir)
    before = (run_dir / "generations.jsonl").read_bytes()
    prompts.write_text("one\nTWO\n")
    with pytest.raises(GemmaRunError, match="was written for other prompts") as e:
        run(compose_cfg([f"prompts_file={prompts}", *args, f"resume={run_dir}"]), run_dir)
    assert e.value.key == "resume"
    assert (run_dir / "generations.jsonl").read_bytes() == before


@pytest.mark.slow
def test_preflight_refuses_an_infer_run_that_does_not_fit_before_generating(cli, tmp_path: Path) -> None:
    proc = cli("prompt=hi", "generation.max_new_tokens=2", "plan.gpus=[1MiB]", "plan.cpu_memory=100KiB")
    assert proc.returncode == 2, proc.stderr
    assert "error: preflight: tiny_gemma3 (infer" in proc.stderr and "Traceback" not in proc.stderr
    (run,) = run_dirs(tmp_path)
    assert json.loads((run / "result.json").read_text())["preflight"]["fits"] is False
    assert not (run / "generations.jsonl").exists()
