"""device_map=tp: tensor-parallel inference over the ranks of launcher=torchrun, on CPUs (gloo, 2 processes).

The tiny default model has 1 KV head, which cannot be split; these tests use it with 4 heads / 2 KV heads
(a different config, so a different cached random checkpoint)."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest

from gemma_run import run
from gemma_run.app.errors import GemmaRunError
from gemma_run.app.validation import validate

SPLITTABLE = ["model.config.num_attention_heads=4", "model.config.num_key_value_heads=2"]
TP2 = ["device_map=tp", "launcher=torchrun", "launcher.nproc_per_node=2"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def problems(compose_cfg, *overrides: str) -> dict[str, str]:
    """key -> message of every validation problem of the composed config."""
    return {p.key: p.format() for p in validate(compose_cfg(list(overrides)))}


def generations(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "generations.jsonl").read_text().splitlines()]


def test_tp_greedy_tokens_equal_one_process(compose_cfg, tmp_path):
    """The same prompts, greedy, batched (left padding): 2 tensor-parallel ranks give what one process gives."""
    prompts = tmp_path / "p.txt"
    prompts.write_text("Hello there\nThe weather today is\nOne two three four five six\n")
    common = [*SPLITTABLE, f"prompts_file={prompts}", "batch_size=2", "generation.max_new_tokens=8"]
    ref = run(compose_cfg([*common, "device_map=cpu"]), tmp_path / "one")
    tp = run(compose_cfg([*common, *TP2, f"launcher.master_port={free_port()}"]), tmp_path / "tp")
    want = [(g["completion"], g["new_tokens"]) for g in generations(tmp_path / "one")]
    got = [(g["completion"], g["new_tokens"]) for g in generations(tmp_path / "tp")]
    assert got == want
    assert [g["new_tokens"] for g in generations(tmp_path / "tp")] == [8, 8, 8]
    assert tp["status"] == "ok" and tp["tensor_parallel"] == 2 and tp["engine"] == "hf"
    # each rank holds about half of the weights (norms and embeddings are replicated)
    per_rank = [sum(d.values()) for d in tp["bytes_per_rank"].values()]
    full = sum(ref["bytes_per_device"].values())
    assert len(per_rank) == 2 and all(full / 2 <= b < full for b in per_rank)
    # every prompt once in the one generations file (rank 1 generated too, but wrote nothing)
    assert [g["index"] for g in generations(tmp_path / "tp")] == [0, 1, 2]
    assert json.loads((tmp_path / "tp" / "result.json").read_text())["generated"] == 3


def test_valid_tp_config_has_no_problems(compose_cfg):
    assert problems(compose_cfg, *SPLITTABLE, *TP2) == {}


@pytest.mark.parametrize(("overrides", "key", "words"), [
    ([*SPLITTABLE, "device_map=tp"], "launcher", "launcher=torchrun launcher.nproc_per_node"),
    ([*SPLITTABLE, "device_map=tp", "launcher=torchrun", "launcher.nproc_per_node=1"], "launcher", "starts 1"),
    ([*SPLITTABLE, *TP2, "quant=4bit"], "quant", "quant=none"),
    ([*TP2], "launcher.nproc_per_node", "num_key_value_heads=1, not divisible by 2"),
    ([*SPLITTABLE, "device_map=tp", "launcher=torchrun", "launcher.nproc_per_node=3"], "launcher.nproc_per_node",
     "num_attention_heads=4, num_key_value_heads=2"),
    ([*SPLITTABLE, *TP2, "generation.engine=fast"], "generation.engine", "generate()"),
    ([*SPLITTABLE, *TP2, "model.random_storage=memory"], "model.random_storage", "random_storage=disk"),
    ([*SPLITTABLE, *TP2, "+device_map.max_memory={cpu:1GiB}"], "device_map.max_memory", "does not apply"),
])
def test_tp_refusals_name_the_key_and_fix(compose_cfg, overrides, key, words):
    found = problems(compose_cfg, *overrides)
    assert key in found, found
    assert words in found[key] and "fix:" in found[key]


def test_tp_refused_for_training(compose_cfg, tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_text('{"text": "hi"}\n')
    found = problems(compose_cfg, "task=train", f"data.train_file={data}", *SPLITTABLE, *TP2)
    assert "task=infer" in found["device_map"]


def test_tp_run_without_torchrun_fails_before_loading(compose_cfg, tmp_path):
    """The pipeline refuses it in Validate, with the fix, and records the error."""
    with pytest.raises(GemmaRunError, match="launcher=torchrun"):
        run(compose_cfg([*SPLITTABLE, "device_map=tp", "prompt=hi"]), tmp_path)
    assert json.loads((tmp_path / "result.json").read_text())["status"] == "failed"


def test_load_outside_torchrun_and_unsplittable_checkpoint_are_refused(compose_cfg, monkeypatch):
    """The loading path checks again what it really loads: the launch, and the checkpoint's own config.json."""
    from gemma_run.distributed import parallel
    from gemma_run.loading import load

    monkeypatch.delenv("RANK", raising=False)
    with pytest.raises(GemmaRunError, match="not started as one of several ranks"):
        load(compose_cfg([*SPLITTABLE, *TP2]))
    with pytest.raises(GemmaRunError) as e:
        parallel.check_checkpoint({"text_config": {"num_attention_heads": 8, "num_key_value_heads": 4,
                                                   "intermediate_size": 1001}}, 8, "/ckpt")
    assert e.value.key == "launcher.nproc_per_node" and "/ckpt/config.json" in e.value.problem
    assert "num_key_value_heads=4" in e.value.problem and "intermediate_size=1001" in e.value.problem


def test_tp_kwargs_follow_the_transformers_api(monkeypatch):
    """distributed_config=DistributedConfig(tp_plan="auto") where it exists (5.18+), else tp_plan="auto"."""
    import transformers.distributed as td

    from gemma_run.distributed import parallel

    kwargs = parallel.from_pretrained_kwargs()
    if "tp_plan" in getattr(td.DistributedConfig, "__dataclass_fields__", {}):
        assert kwargs["distributed_config"].tp_plan == "auto"

    class Old:  # a DistributedConfig without tp_plan (transformers <= 5.17)
        __dataclass_fields__ = {"enable_expert_parallel": None}

    monkeypatch.setattr(td, "DistributedConfig", Old)
    assert parallel.from_pretrained_kwargs() == {"tp_plan": "auto"}


def test_the_fast_engine_refuses_a_sharded_model() -> None:
    """Under device_map=tp each rank's weights sit on one device, so only their type shows the split: the fast
    engine (one process, no collectives) must say no and auto take generate()."""
    import torch

    from gemma_run.infer.engine import unsupported

    class DTensor(torch.nn.Parameter):  # what torch.distributed.tensor's sharded parameters are named
        pass

    model = torch.nn.Linear(4, 4)
    model.weight = DTensor(torch.zeros(4, 4))
    model._can_compile_fullgraph = True
    g = type("G", (), {"repetition_penalty": 1.0})()
    assert "device_map=tp" in unsupported(model, g)


def test_the_plan_splits_a_tp_model_evenly(compose_cfg) -> None:
    """The preflight plans device_map=tp as an even split over the GPUs (1/N of every layer on each), not as
    GPUs filled in order."""
    from gemma_run.planning import inputs

    p, _ = inputs.from_cfg(compose_cfg([*SPLITTABLE, *TP2, "plan.gpus=[24GiB,24GiB]"]), "infer")
    assert p.strategy == "balanced"
