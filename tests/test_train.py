"""task=train and task=merge on the tiny Gemma 3: LoRA, QLoRA, ZeRO-2/3 over 2 gloo processes, resume after
SIGKILL, merge then infer, and every bad input the issue lists. A few steps each; the data is made here."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers.data import WORDS, alpaca_rows, write_jsonl
from helpers.runs import FAST, lora_b_norm, losses, run_dirs, train_api


@pytest.fixture
def alpaca(tmp_path: Path) -> Path:
    return write_jsonl(tmp_path / "alpaca.jsonl", alpaca_rows())


@pytest.fixture
def chat(tmp_path: Path) -> Path:
    rnd = random.Random(1)
    rows = [{"messages": [{"role": "system", "content": "Be brief."},
                          {"role": "user", "content": f"Say {i}"},
                          {"role": "assistant", "content": " ".join(rnd.choices(WORDS, k=5))},
                          {"role": "user", "content": "again"},
                          {"role": "assistant", "content": " ".join(rnd.choices(WORDS, k=3))}]} for i in range(16)]
    return write_jsonl(tmp_path / "chat.jsonl", rows)


# ---------------------------------------------------------------- data


def test_chat_loss_only_on_assistant_turns(compose_cfg, chat: Path):
    from gemma_run.loading import load
    from gemma_run.training import data

    cfg = compose_cfg(["task=train", f"data.train_file={chat}", "train.max_seq_length=128"])
    tok = load(cfg, device_map=None).tokenizer
    prepared = data.prepare(cfg, tok, data.read_checked(cfg))
    prepared.add_token_type_ids()
    row = prepared.train[0]
    first = json.loads(chat.read_text().splitlines()[0])["messages"]
    learned = tok.decode([i for i, lab in zip(row["input_ids"], row["labels"], strict=True) if lab != -100])
    assert learned == f"{first[2]['content']}<end_of_turn>\n{first[4]['content']}<end_of_turn>\n"
    assert "Say 0" in tok.decode(row["input_ids"]) and set(row["token_type_ids"]) == {0}
    assert prepared.stats["format"] == "chat" and prepared.stats["truncated"] == 0


def test_packing_keeps_examples_apart(compose_cfg, chat: Path):
    """Two examples flattened into one row by DataCollatorWithFlattening give the loss they give padded apart."""
    import torch

    from gemma_run.loading import load
    from gemma_run.training import data

    cfg = compose_cfg(["task=train", f"data.train_file={chat}", "data.packing=true", "model.attn_implementation=eager"])
    loaded = load(cfg, device_map=None)
    loaded.model.config.use_cache = False  # as the trainer sets it: packing needs it
    prepared = data.prepare(cfg, loaded.tokenizer, data.read_checked(cfg))
    feats = [prepared.train[i] for i in range(2)]
    packed = prepared.collator(feats)
    assert packed["input_ids"].shape[0] == 1 and "position_ids" in packed
    with torch.no_grad():
        flat = loaded.model(**packed).loss
        sums = []
        for f in feats:
            out = loaded.model(input_ids=torch.tensor([f["input_ids"]]), labels=torch.tensor([f["labels"]]))
            n = sum(1 for x in f["labels"][1:] if x != -100)
            sums.append((out.loss * n, n))
    separate = sum(s for s, _ in sums) / sum(n for _, n in sums)
    assert torch.allclose(flat, separate, atol=1e-5), (flat, separate)


def test_json_parquet_and_saved_dataset_read_alike(tmp_path: Path):
    import pyarrow as pa
    import pyarrow.parquet as pq
    from datasets import Dataset

    from gemma_run.app.errors import GemmaRunError
    from gemma_run.training import data_files as records

    rows = [{"instruction": "a", "input": "", "output": "b"}, {"instruction": "c", "input": "d", "output": "e"}]
    (tmp_path / "r.json").write_text(json.dumps(rows))
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "r.parquet")
    Dataset.from_list(rows).save_to_disk(str(tmp_path / "saved"))
    for name in ("r.json", "r.parquet", "saved"):
        got = records.read(str(tmp_path / name), "data.train_file")
        assert [r.data for r in got] == rows and records.detect_format(got[0]) == "alpaca"
    pq.write_table(pa.Table.from_pylist([{"instruction": "a", "output": ""}]), tmp_path / "bad.parquet")
    with pytest.raises(GemmaRunError, match=r"bad.parquet\[0\]: missing or empty field 'output'"):
        records.check(records.read(str(tmp_path / "bad.parquet"), "data.train_file"), "alpaca")


# ---------------------------------------------------------------- training


@pytest.mark.slow
def test_lora_in_process(compose_cfg, alpaca: Path, tmp_path: Path):
    run_dir = tmp_path / "run"
    result = train_api(compose_cfg, run_dir, f"data.train_file={alpaca}", "train.max_steps=4", "train.save_steps=2",
                       "train.save_total_limit=1", "data.eval_split=0.25")
    assert result["status"] == "ok" and result["global_step"] == 4 and result["world_size"] == 1
    assert sorted(losses(run_dir)) == [1, 2, 3, 4]
    assert lora_b_norm(run_dir / "adapter") > 0
    assert [p.name for p in run_dir.glob("checkpoint-*")] == ["checkpoint-4"]  # save_total_limit=1 rotated
    assert (run_dir / "checkpoint-4" / "gemma_run_complete.json").is_file()
    assert (run_dir / "loss_curve.png").stat().st_size > 1000
    assert list((run_dir / "tensorboard").glob("events.out.tfevents.*"))
    assert result["data"]["train_examples"] == 24 and result["data"]["eval_examples"] == 8
    assert result["eval_loss"] > 0 and result["tokens_seen"] > 0
    assert 0 < result["trainable_parameters"] < result["parameters"]


@pytest.mark.slow
def test_qlora_in_process(compose_cfg, chat: Path, tmp_path: Path):
    result = train_api(compose_cfg, tmp_path / "run", f"data.train_file={chat}", "quant=4bit", "train.max_steps=2",
                       "train.save_steps=2", "data.packing=true")
    assert result["quantized"] is True and result["quant"] == "4bit"
    assert lora_b_norm(Path(result["adapter"])) > 0


@pytest.mark.slow
def test_deepspeed_zero2_and_zero3_two_processes(cli, alpaca: Path, tmp_path: Path):
    """ZeRO-2 through torchrun and ZeRO-3 through the deepspeed launcher: 2 gloo ranks, the same losses."""
    common = ["task=train", f"data.train_file={alpaca}", "train.max_steps=3", "train.save_steps=2", *FAST]
    runs = {}
    for name, launcher, port in (("zero2", "torchrun", 29631), ("zero3", "deepspeed", 29632)):
        cwd = tmp_path / name
        cwd.mkdir()
        proc = cli(*common, f"deepspeed={name}", f"launcher={launcher}", f"launcher.master_port={port}", cwd=cwd)
        assert proc.returncode == 0, proc.stderr[-3000:]
        [run_dir] = run_dirs(cwd)  # the workers made no run dirs of their own
        result = json.loads((run_dir / "result.json").read_text())
        assert result["world_size"] == 2 and result["deepspeed_stage"] == int(name[-1])
        assert json.loads((run_dir / "ds_config.json").read_text())["zero_optimization"]["stage"] == int(name[-1])
        assert lora_b_norm(run_dir / "adapter") > 0
        assert (run_dir / "checkpoint-2" / "gemma_run_complete.json").is_file()
        assert not list(Path("/dev/shm").glob(f"deepspeed_*_{port}_*"))  # the launcher's leftovers removed
        runs[name] = losses(run_dir)
    assert sorted(runs["zero2"]) == [1, 2, 3]
    assert runs["zero2"] == pytest.approx(runs["zero3"], rel=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("cpu", ["avx512_bf16", "avx2"])
def test_qlora_zero3_one_process(cli, alpaca: Path, tmp_path: Path, cpu: str):
    """QLoRA + ZeRO-3 (the GPU test's setup, in fp32 on CPU): 4-bit storage becomes the training dtype.

    Both CPU branches run on any machine: on AVX512-BF16 CPUs the load first checks bitsandbytes' kernel limits
    on a meta skeleton of the model, which must not be built as ZeRO-3 weights."""
    flags = f"+plugins.cpu={{_target_:tests.helpers.probe_plugin.CpuFlags,order:15,flags:[{cpu}]}}"
    proc = cli("task=train", f"data.train_file={alpaca}", "quant=4bit", "deepspeed=zero3", "train.max_steps=2",
               "train.save_steps=2", "train.gradient_checkpointing=true", "launcher.master_port=29633", flags, *FAST,
               env={"PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "quant.quant_storage uint8 -> float32" in proc.stderr
    [run_dir] = run_dirs(tmp_path)
    result = json.loads((run_dir / "result.json").read_text())
    assert result["quantized"] and result["deepspeed_stage"] == 3 and lora_b_norm(run_dir / "adapter") > 0


@pytest.mark.slow
def test_qlora_zero3_two_processes(cli, alpaca: Path, tmp_path: Path):
    """The multi-GPU QLoRA command (quant=4bit deepspeed=zero3 through the deepspeed launcher), on 2 gloo ranks."""
    proc = cli("task=train", f"data.train_file={alpaca}", "quant=4bit", "deepspeed=zero3", "launcher=deepspeed",
               "launcher.nproc_per_node=2", "launcher.master_port=29634", "train.max_steps=2", "train.save_steps=2",
               *FAST)
    assert proc.returncode == 0, proc.stderr[-3000:]
    [run_dir] = run_dirs(tmp_path)
    result = json.loads((run_dir / "result.json").read_text())
    assert result["world_size"] == 2 and result["quantized"] and result["deepspeed_stage"] == 3
    assert lora_b_norm(run_dir / "adapter") > 0


@pytest.mark.slow
def test_sigkill_then_resume_matches_uninterrupted(cache_dir: Path, alpaca: Path, tmp_path: Path):
    args = ["task=train", f"data.train_file={alpaca}", "train.max_steps=150", "train.save_steps=10",
            "train.save_total_limit=2", *FAST]
    env = {**os.environ, "GEMMA_RUN_CACHE": str(cache_dir), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "gemma_run.app.cli", *args]

    def cli(cwd: Path, *extra: str) -> None:
        cwd.mkdir(exist_ok=True)
        proc = subprocess.run([*cmd, *extra], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]

    cli(tmp_path / "whole")
    [whole] = run_dirs(tmp_path / "whole")

    cut = tmp_path / "cut"
    cut.mkdir()
    proc = subprocess.Popen(cmd, cwd=cut, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if list(cut.glob("outputs/*/*/checkpoint-20/gemma_run_complete.json")):
            break
        time.sleep(0.02)
    assert proc.poll() is None, "the run ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    [run_dir] = run_dirs(cut)
    killed_at = max(losses(run_dir))
    assert killed_at < 150

    cli(cut, f"resume={run_dir}")
    assert run_dirs(cut) == [run_dir]
    result = json.loads((run_dir / "result.json").read_text())
    resumed = int(Path(result["resumed_from"]).name.split("-")[1])
    assert resumed >= 20 and result["global_step"] == 150
    expected, got = losses(whole), losses(run_dir)
    assert sorted(got) == list(range(1, 151))
    assert [got[s] for s in range(1, 151)] == pytest.approx([expected[s] for s in range(1, 151)], rel=1e-5)


@pytest.mark.slow
def test_merge_then_infer(compose_cfg, cli, alpaca: Path, tmp_path: Path):
    import torch
    from peft import PeftModel

    from gemma_run import run
    from gemma_run.loading import load

    run_dir = tmp_path / "run"
    result = train_api(compose_cfg, run_dir, f"data.train_file={alpaca}", "train.max_steps=3", "train.save_steps=3",
                       "train.merge=true", "train.learning_rate=0.01")
    merged = Path(result["merge"]["merged"])
    assert (merged / "model.safetensors").is_file()
    # the merged checkpoint computes what base + adapter computes
    base = load(compose_cfg(["task=train"]), device_map=None)
    with_adapter = PeftModel.from_pretrained(base.model, str(run_dir / "adapter")).eval()
    reloaded = load(compose_cfg([f"model.path={merged}", "model.weights=pretrained"]), device_map=None).model
    ids = torch.tensor([[2, 40, 41, 42, 43, 44]])
    with torch.no_grad():
        plain = load(compose_cfg([]), device_map=None).model(ids).logits
        a, b = with_adapter(ids).logits, reloaded(ids).logits
    assert torch.allclose(a, b, atol=1e-4) and not torch.allclose(a, plain, atol=1e-3)
    # task=merge on the run dir writes the same model
    again = run(compose_cfg(["task=merge", f"task.adapter={run_dir}"]), tmp_path / "merge")
    from safetensors.torch import load_file

    x, y = load_file(merged / "model.safetensors"), load_file(Path(again["merged"]) / "model.safetensors")
    assert x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)
    # and task=infer loads it through the documented override
    proc = cli(*result["merge"]["infer_command"].split()[1:], "prompt=Hello", "generation.max_new_tokens=4")
    assert proc.returncode == 0, proc.stderr[-2000:]


# ---------------------------------------------------------------- bad input


def _error(compose_cfg, tmp_path: Path, *overrides: str) -> str:
    from gemma_run.app.errors import GemmaRunError

    with pytest.raises(GemmaRunError) as info:
        train_api(compose_cfg, tmp_path / "run", "train.max_steps=2", *overrides)
    return info.value.format()


def test_missing_and_empty_train_file(compose_cfg, cli, tmp_path: Path):
    proc = cli("task=train", f"data.train_file={tmp_path}/nope.jsonl")
    assert proc.returncode == 2 and "nope.jsonl does not exist" in proc.stderr and "Traceback" not in proc.stderr
    assert "data.train_file" in _error(compose_cfg, tmp_path, "data.train_file=null")
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    assert "has no records" in _error(compose_cfg, tmp_path, f"data.train_file={empty}")


def test_bad_json_line_is_named(compose_cfg, tmp_path: Path):
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"text": "a b"}, {"text": "c d"}, '{"text": "e f"'])
    msg = _error(compose_cfg, tmp_path, f"data.train_file={bad}")
    assert f"{bad}:3: not valid JSON" in msg


def test_record_missing_field_is_named(compose_cfg, tmp_path: Path):
    bad = write_jsonl(tmp_path / "a.jsonl", [{"instruction": "x", "output": "y"}, {"instruction": "z"}])
    msg = _error(compose_cfg, tmp_path, f"data.train_file={bad}")
    assert f"{bad}:2: missing or empty field 'output'" in msg and "alpaca" in msg
    bad_chat = write_jsonl(tmp_path / "c.jsonl", [{"messages": [{"role": "user", "content": "hi"}]}])
    assert "no assistant message" in _error(compose_cfg, tmp_path, f"data.train_file={bad_chat}")


def test_all_sequences_too_long(compose_cfg, tmp_path: Path):
    long = write_jsonl(tmp_path / "long.jsonl", [{"text": " ".join(WORDS * 5)}] * 3)
    msg = _error(compose_cfg, tmp_path, f"data.train_file={long}", "train.max_seq_length=16")
    assert "all 3 examples are longer than train.max_seq_length=16" in msg and "fix: train.max_seq_length=" in msg


def test_unwritable_output_dir(compose_cfg, alpaca: Path, tmp_path: Path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    msg = _error(compose_cfg, tmp_path, f"data.train_file={alpaca}", f"train.output_dir={blocker}/out")
    assert "cannot write into the output dir" in msg and "train.output_dir" in msg


def test_fp16_refused_and_bad_launcher(compose_cfg, alpaca: Path, tmp_path: Path):
    msg = _error(compose_cfg, tmp_path, f"data.train_file={alpaca}", "model.dtype=float16")
    assert "float16 is refused for Gemma 3" in msg
    msg = _error(compose_cfg, tmp_path, f"data.train_file={alpaca}", "launcher.nproc_per_node=2")
    assert "launcher=local runs one process" in msg


@pytest.mark.slow
def test_resume_skips_a_corrupted_checkpoint(compose_cfg, alpaca: Path, tmp_path: Path):
    run_dir = tmp_path / "run"
    args = [f"data.train_file={alpaca}", "train.max_steps=4", "train.save_steps=2", "train.save_total_limit=3"]
    train_api(compose_cfg, run_dir, *args)
    weights = run_dir / "checkpoint-4" / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])  # a file damaged after the save
    (run_dir / "checkpoint-6").mkdir()  # a save killed before its marker
    (run_dir / "checkpoint-6" / "adapter_model.safetensors").write_bytes(b"partial")
    result = train_api(compose_cfg, run_dir, *args, f"resume={run_dir}")
    assert Path(result["resumed_from"]).name == "checkpoint-2" and result["global_step"] == 4
    killed, damaged = result["skipped_checkpoints"]
    assert "no completion marker" in killed["reason"] and Path(killed["moved_to"]).name == "incomplete-checkpoint-6"
    assert "adapter_model.safetensors has 100 bytes" in damaged["reason"]
    assert Path(damaged["moved_to"]).name == "incomplete-checkpoint-4" and Path(damaged["moved_to"]).is_dir()
    assert sorted(losses(run_dir)) == [1, 2, 3, 4]
    # resuming with another schedule is refused, naming the key
    from gemma_run.app.errors import GemmaRunError

    with pytest.raises(GemmaRunError, match=r"train.max_steps: 4 -> 6"):
        train_api(compose_cfg, run_dir, *args[:1], "train.max_steps=6", "train.save_steps=2",
                  "train.save_total_limit=3", f"resume={run_dir}")


def test_unpacked_batches_are_padded_to_a_multiple_of_16(compose_cfg, chat: Path):
    """Batches of any lengths come out padded (labels ignored, attention masked) to a multiple of PAD_MULTIPLE,
    so kernels compiled for one padded size serve the next (and the loss is that of the unpadded rows)."""
    import torch

    from gemma_run.loading import load
    from gemma_run.training import data

    cfg = compose_cfg(["task=train", f"data.train_file={chat}"])
    loaded = load(cfg, device_map=None)
    prepared = data.prepare(cfg, loaded.tokenizer, data.read_checked(cfg))
    feats = [prepared.train[i] for i in range(2)]
    longest = max(len(f["input_ids"]) for f in feats)
    batch = prepared.collator(feats)
    width = batch["input_ids"].shape[1]
    assert width % data.PAD_MULTIPLE == 0 and longest <= width < longest + data.PAD_MULTIPLE
    for row, f in enumerate(feats):
        n = len(f["input_ids"])
        assert int(batch["attention_mask"][row].sum()) == n
        assert (batch["labels"][row][batch["attention_mask"][row] == 0] == -100).all()
    with torch.no_grad():
        padded = loaded.model(**batch).loss
        cut = {k: v[:, :longest] if loaded.tokenizer.padding_side == "right" else v[:, -longest:]
               for k, v in batch.items()}
        assert torch.allclose(padded, loaded.model(**cut).loss, atol=1e-5)
