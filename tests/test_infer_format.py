"""quant=4bit in inference runs (gemma_run.quant.infer_format): int4 where one CUDA GPU can run it, NF4 with the
reason everywhere else, training always NF4, and an explicit choice always wins. The GPU is faked (the plugin's
``has_cuda`` and plan.gpus) so both branches run on any machine; tests/test_infer_gpu.py loads it on a real GPU."""

from __future__ import annotations

import pytest

from gemma_run.app.context import RunContext
from gemma_run.app.errors import GemmaRunError
from gemma_run.quant import infer_format

ONE_GPU = ["task=infer", "model=gemma3_4b", "quant=4bit", "plan.gpus=[24GiB]"]


@pytest.fixture
def cuda(monkeypatch):
    """The plugin told that this machine has a CUDA GPU with bf16 (the plan's GPUs come from plan.gpus)."""
    monkeypatch.setattr(infer_format, "has_cuda", lambda: True)


def _plugin(cfg, tmp_path):
    ctx = RunContext(cfg=cfg, run_dir=tmp_path)
    infer_format.ChooseFormat()(ctx)
    return ctx


def test_quant_4bit_inference_on_one_gpu_loads_int4_and_says_why(compose_cfg, cuda, tmp_path):
    ctx = _plugin(compose_cfg(ONE_GPU), tmp_path)
    q = ctx.cfg.quant
    assert (q.name, q.backend, q._target_, q.group_size) == ("int4", "torchao", "gemma_run.quant.torchao.TorchAoInt4",
                                                              128)
    assert ctx.result["quant_loaded"]["format"] == "int4"
    assert "quant.infer_as=keep" in ctx.result["quant_loaded"]["reason"]
    # the preflight after it plans what loads: int4's bytes, not NF4's
    from gemma_run.planning import inputs

    assert inputs.from_cfg(ctx.cfg, "infer")[0].quant.mode == "int4"


def test_the_skip_list_goes_with_the_weights(compose_cfg, cuda, tmp_path):
    ctx = _plugin(compose_cfg([*ONE_GPU, "quant.skip_modules=[lm_head,o_proj]"]), tmp_path)
    assert ctx.cfg.quant.name == "int4" and list(ctx.cfg.quant.skip_modules) == ["lm_head", "o_proj"]


@pytest.mark.parametrize(("overrides", "why"), [
    (["quant.infer_as=keep"], None),  # NF4 asked for: nothing to choose
    (["generation.kernel_4bit=gemv4"], "generation.kernel_4bit=gemv4"),
    (["generation.kernel_4bit=bitsandbytes"], "generation.kernel_4bit=bitsandbytes"),
    (["device_map=cpu"], "device_map=cpu"),
    (["quant.cpu_offload=true"], "quant.cpu_offload"),
    (["model.dtype=float32"], "model.dtype=float32"),
    (["model=tiny_gemma3"], "q_proj"),  # 64 inputs: no whole group of 128
    (["model=gemma3_27b", "plan.gpus=[16GiB,16GiB]"], "spreads the model over GPU 0, GPU 1, and int4 pays off "
                                                      "where one GPU decodes"),
    (["model=gemma3_27b", "plan.gpus=[24GiB,24GiB]"], "device_map=single puts it on GPU 0, where it fits"),
    (["model=gemma3_27b", "plan.gpus=[12GiB]"], "does not fit"),
])
def test_nf4_stays_where_int4_cannot_or_should_not_run(compose_cfg, cuda, tmp_path, overrides, why):
    ctx = _plugin(compose_cfg([*ONE_GPU, *overrides]), tmp_path)
    assert ctx.cfg.quant.name == "4bit" and ctx.cfg.quant.backend == "bitsandbytes"
    if why is None:
        assert "quant_loaded" not in ctx.result
    else:
        assert ctx.result["quant_loaded"]["format"] == "nf4"
        assert why in ctx.result["quant_loaded"]["reason"]


def test_without_a_gpu_it_stays_nf4(compose_cfg, tmp_path, monkeypatch):
    monkeypatch.setattr(infer_format, "has_cuda", lambda: False)
    ctx = _plugin(compose_cfg(ONE_GPU), tmp_path)
    assert ctx.cfg.quant.name == "4bit"
    assert "no CUDA GPU" in ctx.result["quant_loaded"]["reason"]


def test_without_torchao_it_stays_nf4_and_names_the_install(compose_cfg, cuda, tmp_path, monkeypatch):
    from gemma_run.quant import torchao

    def missing():
        raise GemmaRunError("quant=int4 needs torchao, which cannot be imported here", key="quant")

    monkeypatch.setattr(torchao, "check_torchao", missing)
    ctx = _plugin(compose_cfg(ONE_GPU), tmp_path)
    assert ctx.cfg.quant.name == "4bit"
    assert "pip install torchao" in ctx.result["quant_loaded"]["reason"]


@pytest.mark.parametrize("task", [["task=train"], ["task=test"]])
def test_training_and_the_doctor_keep_nf4(compose_cfg, cuda, tmp_path, task):
    ctx = _plugin(compose_cfg([*ONE_GPU, *task]), tmp_path)
    assert ctx.cfg.quant.name == "4bit" and "quant_loaded" not in ctx.result


def test_infer_as_int4_where_int4_cannot_run_is_refused_with_the_reason(compose_cfg, cuda, tmp_path):
    cfg = compose_cfg([*ONE_GPU, "model=gemma3_27b", "plan.gpus=[16GiB,16GiB]", "quant.infer_as=int4"])
    with pytest.raises(GemmaRunError) as err:
        _plugin(cfg, tmp_path)
    assert err.value.key == "quant.infer_as" and "spreads the model" in err.value.problem
    assert "quant.infer_as=auto" in err.value.fix


def test_infer_as_int4_where_it_can_run_loads_int4(compose_cfg, cuda, tmp_path):
    ctx = _plugin(compose_cfg([*ONE_GPU, "quant.infer_as=int4"]), tmp_path)
    assert ctx.cfg.quant.name == "int4" and ctx.result["quant_loaded"]["reason"] == "quant.infer_as=int4"


def test_infer_as_on_another_quant_option_is_a_config_error(cli):
    out = cli("task=infer", "quant=8bit", "quant.infer_as=auto", "prompt=hi")
    assert out.returncode != 0
    assert "quant.infer_as" in out.stderr and "quant=4bit" in out.stderr
    assert "Traceback" not in out.stderr


def test_a_cpu_run_records_why_it_stays_nf4(cli, tmp_path):
    import json

    pytest.importorskip("bitsandbytes")
    out = cli("task=infer", "quant=4bit", "prompt=Hi, there!", "generation.max_new_tokens=2", "hydra.run.dir=run")
    assert out.returncode == 0, out.stderr[-2000:]
    loaded = json.loads((tmp_path / "run" / "result.json").read_text())["quant_loaded"]
    assert loaded["format"] == "nf4" and "no CUDA GPU" in loaded["reason"]


def test_task_plan_plans_what_an_inference_run_loads(compose_cfg, cuda, tmp_path, capsys):
    from gemma_run.tasks import plan

    infer = plan.run(compose_cfg(["task=plan", "model=gemma3_4b", "quant=4bit", "plan.gpus=[24GiB]"]), tmp_path)
    assert infer["quant_loaded"]["format"] == "int4" and infer["plan"]["quant"] == "int4"
    assert "quant=4bit loads int4" in capsys.readouterr().out
    train = plan.run(compose_cfg(["task=plan", "plan.mode=train", "model=gemma3_4b", "quant=4bit",
                                  "plan.gpus=[24GiB]"]), tmp_path)
    assert train["plan"]["quant"] == "nf4" and "quant_loaded" not in train
