"""task=test, the environment doctor: every check runs on CPU (GPU checks skip with the reason), a failing
check makes the exit code 1, and report.json / report.md hold every check."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
from helpers.run_if import RunIf
from helpers.runs import run_dirs

from gemma_run.doctor import registry, report, versions
from gemma_run.doctor.base import CheckResult, DoctorContext, Finding

GPU_CHECKS = {"gpus.cuda", "gpus.p2p", "gpus.nccl", "smoke.spread"}


def _report(root: Path) -> dict:
    return json.loads((run_dirs(root)[-1] / "report.json").read_text())


@pytest.mark.slow
def test_every_check_runs_on_cpu_and_gpu_checks_skip_with_reason(cli, tmp_path: Path) -> None:
    p = cli("task=test")
    assert p.returncode == 0, p.stderr[-3000:]
    rep = _report(tmp_path)
    by_name = {c["name"]: c for c in rep["checks"]}
    assert list(by_name) == [c.name for c in registry.CHECKS]  # all of them, in run order
    for name in GPU_CHECKS:
        assert by_name[name]["status"] == "skip", by_name[name]
        assert "GPU" in by_name[name]["finding"] or "CPU build" in by_name[name]["finding"]
    for name in ("smoke.load", "smoke.generate", "smoke.fast_engine", "smoke.lora"):
        assert by_name[name]["status"] == "pass", by_name[name]
    assert all(c["status"] != "fail" for c in rep["checks"]), [c for c in rep["checks"] if c["status"] == "fail"]
    lora = by_name["smoke.lora"]["details"]
    assert lora["lora_B_changed"] == lora["lora_B_tensors"] > 0 and lora["base_unchanged"] is True
    gen = by_name["smoke.generate"]["details"]["devices"][0]
    assert gen["device"] == gen["input_device"] == gen["inputs_on"] == "cpu" and gen["new_tokens"] == 8
    if versions.installed("bitsandbytes"):  # optional: the old stack (scripts/old_stack) runs without it
        assert by_name["quant.bitsandbytes"]["status"] == "pass"
        assert by_name["quant.bitsandbytes"]["details"]["kernel_error"] < 0.02
    md = (run_dirs(tmp_path)[-1] / "report.md").read_text()
    assert all(f"`{name}`" in md for name in by_name)
    assert f"overall: {rep['status'].upper()}" in p.stdout and "smoke.lora" in p.stdout  # the table, on stdout
    result = json.loads((run_dirs(tmp_path)[-1] / "result.json").read_text())
    assert result["status"] == "ok" and result["doctor"]["counts"]["fail"] == 0 and "exit_code" not in result


def test_missing_model_fails_the_smoke_checks_and_exits_1(cli, tmp_path: Path) -> None:
    p = cli("task=test", "task.checks=[shims,smoke]", "task.model=/nonexistent/model")
    assert p.returncode == 1, p.stderr[-2000:]
    by_name = {c["name"]: c for c in _report(tmp_path)["checks"]}
    assert by_name["smoke.load"]["status"] == "fail"
    assert "does not exist" in by_name["smoke.load"]["finding"] and by_name["smoke.load"]["fix"]
    assert by_name["smoke.generate"]["status"] == "skip"  # not the same failure three more times
    assert by_name["shims.applied"]["status"] == "pass"
    assert "FAIL" in p.stdout and "fixes:" in p.stdout
    result = json.loads((run_dirs(tmp_path)[-1] / "result.json").read_text())
    assert result["status"] == "failed" and result["doctor"]["failed"] == ["smoke.load"]


@RunIf(bnb=True)  # the fake shadows an installed bitsandbytes: the check reads its metadata
def test_broken_library_fails_its_check(cli, tmp_path: Path) -> None:
    """An installed bitsandbytes that cannot import (a wrong native build) is a failure, not a warning."""
    fake = tmp_path / "fake"
    (fake / "bitsandbytes").mkdir(parents=True)
    (fake / "bitsandbytes" / "__init__.py").write_text(
        'raise ImportError("libbitsandbytes_cuda121.so: cannot open shared object file")\n')
    p = cli("task=test", "task.checks=[quant]", env={"PYTHONPATH": str(fake)})
    assert p.returncode == 1, p.stderr[-2000:]
    check = _report(tmp_path)["checks"][0]
    assert check["name"] == "quant.bitsandbytes" and check["status"] == "fail"
    assert "does not import" in check["finding"] and "libbitsandbytes_cuda121" in check["finding"]


def test_unknown_check_name_is_a_config_error_with_suggestion(compose_cfg) -> None:
    from gemma_run.tasks.test import validate

    problems = validate(compose_cfg(["task=test", "task.checks=[gpu,versions.torch]"]))
    assert len(problems) == 1 and "did you mean gpus" in problems[0].format()


def test_select_by_family_and_name() -> None:
    picked, unknown = registry.select(["gpus", "smoke.lora"])
    assert [c.name for c in picked] == ["gpus.cuda", "gpus.p2p", "gpus.nccl", "smoke.lora"] and not unknown
    assert registry.select(["nope"])[1] == ["nope"]


def test_task_model_as_option_name(compose_cfg, tmp_path: Path) -> None:
    from gemma_run import run

    cfg = compose_cfg(["task=test", "task.checks=[smoke.load]", "task.model=tiny_gemma3"])
    assert run(cfg, tmp_path)["status"] == "ok"
    cfg = compose_cfg(["task=test", "task.checks=[smoke.load]", "task.model=no_such_model"])
    result = run(cfg, tmp_path)
    check = json.loads((tmp_path / "report.json").read_text())["checks"][0]
    assert result["status"] == "failed" and result["exit_code"] == 1
    assert "task.model" in check["finding"] and "tiny_gemma3" in check["fix"]


@pytest.mark.parametrize(("have", "status", "words"), [
    ("2.2.2+cu121", "warn", ["torch.load", "resuming", "get_default_device"]),
    ("2.5.1", "warn", ["torch.load"]),
    ("2.1.0", "fail", ["older than"]),
    ("2.13.0", "pass", []),
    ("2.20.0", "warn", ["newer than"]),
])
def test_torch_against_the_matrix(monkeypatch, have: str, status: str, words: list[str]) -> None:
    monkeypatch.setattr(versions, "installed", lambda dist: {"torch": have, "numpy": "1.26.4"}.get(dist, "4.53.3"))
    f = versions._check("torch")(None)
    assert f.status == status, f
    assert all(w in f.finding for w in words), f.finding
    assert (f.fix is not None) == (status != "pass")


def test_version_traps_between_libraries(monkeypatch) -> None:
    stack = {"torch": "2.2.2", "numpy": "2.1.0", "transformers": "5.0.0"}
    monkeypatch.setattr(versions, "installed", lambda dist: stack.get(dist))
    assert "numpy<2" in versions._check("torch")(None).finding
    f = versions._check("transformers")(None)
    assert f.status == "fail" and "needs torch >= 2.6" in f.finding
    stack.pop("transformers")
    assert versions._check("transformers")(None).status == "fail"  # required and missing
    assert versions._check("deepspeed")(None).status == "warn"  # optional and missing


def test_shim_needed_but_not_applied_fails(monkeypatch) -> None:
    from gemma_run.doctor.shims import shims_check
    from gemma_run.patches import registry
    from gemma_run.patches.base import Patch

    state = {"applied": False}
    fake = Patch(name="fake.shim", phase="process_start", symptom="boom", trigger="lib < 1",
                 upstream="https://example.invalid", needed=lambda **_: None if state["applied"] else "lib 0.9 here",
                 apply=lambda **_: state.update(applied=True), undo=lambda **_: state.update(applied=False),
                 is_applied=lambda **_: state["applied"])
    monkeypatch.setattr(registry, "PATCHES", [fake])
    monkeypatch.setattr(registry, "APPLIED", {})
    f = shims_check(None)
    assert f.status == "fail" and "fake.shim" in f.finding and "plugins.shims" in f.fix
    registry.apply_all([fake])
    f = shims_check(None)
    assert f.status == "pass" and "fake.shim applied (lib < 1)" in f.finding


def test_env_check_redacts_secrets(monkeypatch, compose_cfg, tmp_path: Path) -> None:
    from gemma_run.doctor.env import env_check

    monkeypatch.setenv("HF_TOKEN", "hf_secret_value")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    f = env_check(DoctorContext(compose_cfg(["task=test"]), tmp_path))
    assert "hf_secret_value" not in json.dumps(f.details) + f.finding
    assert f.details["in_effect"]["HF_TOKEN"] == "[REDACTED]"
    assert f.status == "warn" and "hides every GPU" in f.finding


def test_a_crashing_check_fails_alone(tmp_path: Path) -> None:
    from gemma_run.app.errors import GemmaRunError
    from gemma_run.doctor.base import Check

    def boom(ctx):
        raise RuntimeError("kaboom")

    def user_error(ctx):
        raise GemmaRunError("x is wrong", key="task.x", fix="task.x=1")

    r = registry.run_check(Check("t.boom", boom, ""), DoctorContext(None, tmp_path))
    assert r.status == "fail" and "RuntimeError: kaboom" in r.finding and "kaboom" in r.details["traceback"]
    r = registry.run_check(Check("t.user", user_error, ""), DoctorContext(None, tmp_path))
    assert r.status == "fail" and r.fix == "task.x=1" and "task.x" in r.finding


def test_report_files_and_overall(tmp_path: Path) -> None:
    results = [CheckResult("a.one", "pass", "fine", None, 0.1), CheckResult("a.two", "skip", "no GPU", "x", 0.0),
               CheckResult("b.one", "warn", "old | version", "upgrade", 0.2)]
    rep = report.write(results, tmp_path, "tiny")
    assert rep["status"] == "warn" and rep["counts"] == {"pass": 1, "warn": 1, "fail": 0, "skip": 1}
    assert json.loads((tmp_path / "report.json").read_text())["checks"][2]["fix"] == "upgrade"
    md = (tmp_path / "report.md").read_text()
    assert "old \\| version" in md and md.count("| `") == 3
    text = report.table(results)
    assert "fixes:" in text and "b.one [WARN]: upgrade" in text and "a.two [skip]" not in text
    assert report.overall([*results, CheckResult("c", "fail", "", "f", 0)]) == "fail"
    with pytest.raises(ValueError):
        Finding("ok", "not a status")


def test_arch_list_matching() -> None:
    from gemma_run.doctor.gpus import arch_supported

    assert arch_supported(["sm_80", "sm_90"], 8, 6)  # SASS of 8.0 runs on 8.6
    assert arch_supported(["sm_90", "compute_90"], 12, 0)  # PTX JIT for a newer GPU
    assert not arch_supported(["sm_90", "sm_100"], 7, 5)
    assert arch_supported(["sm_100"], 10, 0)


def test_allreduce_probe_runs_in_separate_processes() -> None:
    """The NCCL probe's mechanism (N processes, checked values, hang timeout), with gloo on CPU."""
    from gemma_run.doctor.gpus import allreduce_probe

    r = allreduce_probe(2, backend="gloo", timeout=120, mib=1)
    assert r["ok"] is True and r["got"] == r["expected"] == 3.0 and r["world"] == 2
    r = allreduce_probe(2, backend="gloo", timeout=0.5, mib=1)  # cannot even import torch in time: "hung"
    assert r["ok"] is False and r["hung"] is True and "did not finish" in r["error"]


def test_nothing_heavy_imported_by_the_registry() -> None:
    import subprocess
    import sys

    code = textwrap.dedent("""
        import sys
        import gemma_run.doctor.registry, gemma_run.tasks.test
        heavy = [m for m in ("torch", "transformers", "peft", "deepspeed", "bitsandbytes") if m in sys.modules]
        print(heavy)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


@RunIf(gpus=1)
def test_full_suite_on_gpu(cli, tmp_path: Path) -> None:
    """The whole doctor on a GPU machine; prints the console table and report.md (put them in the note)."""
    p = cli("task=test", timeout=1200)
    print(p.stdout)
    print((run_dirs(tmp_path)[-1] / "report.md").read_text())
    assert p.returncode == 0, p.stderr[-4000:]
    by_name = {c["name"]: c for c in _report(tmp_path)["checks"]}
    assert by_name["gpus.cuda"]["status"] in ("pass", "warn")
    gen = by_name["smoke.generate"]["details"]["devices"]
    assert [g["device"] for g in gen] == [f"cuda:{i}" for i in range(len(gen))]
    assert all(g["inputs_on"] == g["input_device"] == g["device"] for g in gen)
    assert by_name["smoke.lora"]["status"] == "pass"
    if len(gen) >= 2:
        assert by_name["gpus.nccl"]["status"] == "pass" and by_name["smoke.spread"]["status"] in ("pass", "warn")


@pytest.mark.parametrize(("have", "status", "words"), [
    ("5.4.0", "fail", ["Gemma 4 (model_type gemma4) needs transformers >= 5.5.0", "5.4.0 is installed"]),
    ("5.5.1", "warn", ["use_cache=False", "device_map=auto"]),
    ("5.23.0", "pass", ["Gemma 4 loads and trains"]),
])
def test_model_family_against_the_installed_transformers(monkeypatch, compose_cfg, tmp_path: Path, have: str,
                                                         status: str, words: list[str]) -> None:
    monkeypatch.setattr(versions, "installed", lambda dist: {"transformers": have}.get(dist, "1.0"))
    cfg = compose_cfg(["task=test", "task.checks=[versions.model]", "task.model=gemma4_31b"])
    f = versions.model_family(DoctorContext(cfg, tmp_path))
    assert f.status == status and all(w in f.finding for w in words), f.finding
    if status != "pass":
        assert "transformers>=5.5.3" in f.fix
    assert versions.model_family(DoctorContext(compose_cfg(["task=test"]), tmp_path)).status == "pass"  # Gemma 3
    assert "versions.model" in [c.name for c in registry.select(["versions"])[0]]


def test_gemma4_on_an_old_transformers_is_one_error_before_loading(monkeypatch, compose_cfg, tmp_path: Path) -> None:
    from gemma_run import run
    from gemma_run.app.errors import GemmaRunError
    from gemma_run.app.validation import validate

    monkeypatch.setattr(versions, "installed", lambda dist: {"transformers": "4.57.1"}.get(dist))
    cfg = compose_cfg(["model=gemma4_e4b", "model.weights=random", "prompt=hi"])
    problems = [p for p in validate(cfg) if "transformers" in p.format()]
    assert len(problems) == 1 and problems[0].key == "model"
    assert "needs transformers >= 5.5.0" in problems[0].format() and "transformers>=5.5.3" in problems[0].format()
    with pytest.raises(GemmaRunError, match=r"needs transformers >= 5\.5\.0"):
        run(cfg, tmp_path)
    monkeypatch.setattr(versions, "installed", lambda dist: {"transformers": "5.9.0"}.get(dist))
    assert "transformers >= 5.10.0" in " ".join(p.format() for p in validate(compose_cfg(["model=gemma4_12b"])))
