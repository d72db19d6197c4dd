"""Process-start patches (the shims plugin's step), each tested against the old library simulated in a subprocess
(the attribute removed)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

OLD_TORCH = """
import json, torch
del torch.get_default_device          # what torch < 2.3 looks like
import gemma_run.patches as shims    # importing applies nothing
out = {"after_import": hasattr(torch, "get_default_device")}
first = shims.apply_all()
second = shims.apply_all()
out["first"] = [r.status for r in first if r.name == "torch.get_default_device"]
out["second"] = [r.status for r in second if r.name == "torch.get_default_device"]
out["default"] = str(torch.get_default_device())
torch.set_default_device("meta")
out["after_set_default_device"] = str(torch.get_default_device())
torch.set_default_device(None)
with torch.device("meta"):
    out["inside_device_context"] = str(torch.get_default_device())
out["after_context"] = str(torch.get_default_device())
print(json.dumps(out))
"""


def _run(code: str) -> dict:
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_get_default_device_shim_behaves_like_torch() -> None:
    out = _run(OLD_TORCH)
    assert out["after_import"] is False  # never applied at import time
    assert out["first"] == ["applied"] and out["second"] == ["already applied"]  # idempotent
    assert out["default"] == "cpu"
    assert out["after_set_default_device"] == "meta"  # honours torch.set_default_device, no hard-coded cuda:0
    assert out["inside_device_context"] == "meta"
    assert out["after_context"] == "cpu"


def test_get_default_device_shim_not_applied_when_torch_has_it() -> None:
    out = _run("import json, torch, gemma_run.patches as s; f = torch.get_default_device; r = s.apply_all(); "
               "print(json.dumps({'s': [x.status for x in r if x.name == 'torch.get_default_device'], "
               "'same': torch.get_default_device is f}))")
    assert out == {"s": ["not needed"], "same": True}


def test_shim_makes_loading_work_on_old_torch(tmp_path, cache_dir) -> None:
    """transformers calls torch.get_default_device while loading: without it loading fails; with the shim it works."""
    code = f"""
import json, torch
del torch.get_default_device
from gemma_run import compose
from gemma_run.loading import load
cfg = compose(["cache_dir={cache_dir}", "device_map=cpu"])
try:
    load(cfg)
    unshimmed = "loaded"
except AttributeError as e:
    unshimmed = "AttributeError"
import gemma_run.patches as shims
shims.apply_all()
loaded = load(cfg)
print(json.dumps({{"unshimmed": unshimmed, "device": str(loaded.input_device)}}))
"""
    out = _run(code)
    if out["unshimmed"] == "loaded":
        pytest.skip("this transformers does not call torch.get_default_device while loading")
    assert out == {"unshimmed": "AttributeError", "device": "cpu"}
