"""Quantization backends as components: each conf/quant/*.yaml names its class by ``_target_``."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from gemma_run.planning.memory import Quant
from gemma_run.quant import from_cfg
from gemma_run.quant.bitsandbytes import BitsAndBytes
from gemma_run.quant.none import NoQuant
from gemma_run.quant.torchao import TorchAoInt4

CONF = Path(__file__).parents[1] / "gemma_run" / "conf" / "quant"

# option -> (class, trains, zero3_sharding, tensor_parallel, the planner's Quant on a GPU / on the CPU)
EXPECTED = {
    "none": (NoQuant, True, True, True, Quant(), Quant()),
    "8bit": (BitsAndBytes, True, False, False, Quant("int8"), Quant("int8")),
    "4bit": (BitsAndBytes, True, True, False, Quant("nf4"), Quant("nf4")),
    "fp4": (BitsAndBytes, True, True, False, Quant("fp4"), Quant("fp4")),
    "int4": (TorchAoInt4, False, False, False, Quant("int4"), Quant("int4", padded=False)),
}


def test_every_option_is_covered() -> None:
    assert sorted(p.stem for p in CONF.glob("*.yaml")) == sorted(EXPECTED)


@pytest.mark.parametrize("option", sorted(EXPECTED))
def test_option_composes_and_instantiates_its_backend(compose_cfg, option: str) -> None:
    cls, trains, zero3, tp, on_gpu, on_cpu = EXPECTED[option]
    cfg = compose_cfg([f"quant={option}"])
    backend = from_cfg(cfg.quant)
    assert type(backend) is cls and backend.name == cfg.quant.backend
    assert (backend.trains, backend.zero3_sharding, backend.tensor_parallel) == (trains, zero3, tp)
    assert backend.quantized == (option != "none")
    assert backend.planner_quant(True) == on_gpu and backend.planner_quant(False) == on_cpu
    assert backend.problems() == []


def test_options_keep_their_keys_and_defaults(compose_cfg) -> None:
    q = compose_cfg(["quant=4bit"]).quant
    assert (q.quant_type.value, q.double_quant, q.compute_dtype, q.quant_storage, q.int8_threshold, q.cpu_offload,
            list(q.skip_modules), q.lm_head) == ("nf4", True, "bfloat16", "uint8", 6.0, False, [], "keep")
    q = compose_cfg(["quant=int4", "quant.group_size=64", "quant.lm_head=int4"]).quant
    assert (q.group_size, q.packing_format, q.qparams_algorithm, q.lm_head) == (64, "auto", "tinygemm", "int4")
    assert from_cfg(q).planner_quant(True) == Quant("int4", group_size=64, lm_head=True)


def test_a_key_of_another_backend_fails_at_compose(compose_cfg) -> None:
    from hydra.errors import ConfigCompositionException

    with pytest.raises(ConfigCompositionException):
        compose_cfg(["quant=4bit", "quant.group_size=64"])


def test_backend_must_match_the_target(compose_cfg) -> None:
    from gemma_run.app.validation import validate

    assert [e.key for e in validate(compose_cfg(["quant=4bit", "quant.backend=torchao"]))] == ["quant.backend"]
    assert [e.key for e in validate(compose_cfg(["quant=8bit", "quant.bits=16"]))] == ["quant.bits"]


def test_zero3_overrides(compose_cfg) -> None:
    assert from_cfg(compose_cfg(["quant=4bit"]).quant).zero3_overrides("bfloat16") == {"quant_storage": "bfloat16"}
    assert from_cfg(compose_cfg(["quant=8bit"]).quant).zero3_overrides("bfloat16") == {}
    assert from_cfg(compose_cfg(["quant=none"]).quant).zero3_overrides("bfloat16") == {}


def test_from_cfg_imports_nothing_heavy() -> None:
    code = ("import sys; from omegaconf import OmegaConf; from gemma_run.quant import from_cfg; "
            "[from_cfg(OmegaConf.create({'_target_': f'gemma_run.quant.{t}', 'bits': 4, 'backend': None, "
            "'name': 'x', 'lm_head': 'keep'})).problems() for t in ('none.NoQuant', "
            "'bitsandbytes.BitsAndBytes')]; print([m for m in ('torch', 'transformers', 'bitsandbytes', 'torchao') "
            "if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "[]", out.stderr


DUMMY = '''
from gemma_run.quant.base import QuantBackend


class Dummy(QuantBackend):
    """Plans as bitsandbytes 8-bit, loads unquantized: enough to show a backend is a module + a YAML."""

    name = "dummy"
    allowed_bits = (8,)

    def transformers_config(self, model_type="", on_cuda=None, dtype="bfloat16"):
        return None

    def planner_quant(self, on_gpu=True):
        from gemma_run.planning.memory import Quant

        return Quant("int8")
'''


def test_a_new_backend_is_a_module_and_a_yaml(tmp_path: Path, cli) -> None:
    (tmp_path / "my_quant.py").write_text(DUMMY)
    (tmp_path / "conf" / "quant").mkdir(parents=True)
    (tmp_path / "conf" / "quant" / "dummy.yaml").write_text(
        "defaults:\n  - base_quant\n_target_: my_quant.Dummy\nname: dummy\nbackend: dummy\nbits: 8\n")
    path = os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])
    out = cli("--config-dir", str(tmp_path / "conf"), "task=plan", "quant=dummy", env={"PYTHONPATH": path})
    assert out.returncode == 0, out.stderr[-3000:]
    assert "int8" in out.stdout + out.stderr


@pytest.mark.parametrize(("target", "problem"), [
    ("no_such_module.Backend", "cannot be imported: No module named 'no_such_module'"),
    ("gemma_run.quant.NoSuchBackend", "cannot be imported: module 'gemma_run.quant' has no attribute 'NoSuchBackend'"),
    ("gemma_run.distributed.launchers.local.Local", "is not a QuantBackend subclass"),
])
def test_a_bad_target_is_one_error_naming_the_key(cli, target: str, problem: str) -> None:
    out = cli("task=plan", f"quant._target_={target}")
    assert out.returncode == 2
    (line,) = [x for x in out.stderr.splitlines() if "error:" in x]
    assert line.endswith(f"error: quant._target_='{target}' {problem}")
    assert "at:  quant._target_" in out.stderr and "Traceback" not in out.stderr
