"""Versions of Python and the libraries against the supported matrix, with the known traps named.

The matrix (docs/doctor.md explains each number):
  floor    the oldest version gemma-run runs on (below: fail)
  clean    the oldest version with no known trap (between floor and clean: warn, naming the trap)
  tested   the newest minor release tried (above: warn, untested)
Python 3.10 and transformers 4.53 / torch 2.2 are the oldest supported stack, proven by scripts/old_stack/.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

from gemma_run.doctor.base import DoctorContext, Finding


@dataclass(frozen=True)
class Supported:
    dist: str  # the name pip knows it by
    floor: str
    clean: str
    tested: str
    optional: str | None = None  # the extra that installs it, when gemma-run runs without it
    trap: str = ""  # what goes wrong between floor and clean


MATRIX: dict[str, Supported] = {
    "python": Supported("python", "3.10", "3.10", "3.12"),
    "torch": Supported(
        "torch", "2.2", "2.6", "2.13",
        trap="transformers refuses torch.load on torch < 2.6 (CVE-2025-32434), so pickle weights "
             "(.bin, model.allow_pickle=true) and resuming a Trainer checkpoint (optimizer.pt, scheduler.pt) fail"),
    "transformers": Supported("transformers", "4.53", "4.53", "5.23"),
    "accelerate": Supported("accelerate", "1.0", "1.0", "1.15"),
    "peft": Supported("peft", "0.13", "0.13", "0.21"),
    "bitsandbytes": Supported("bitsandbytes", "0.45", "0.45", "0.50", optional="quant"),
    "deepspeed": Supported("deepspeed", "0.16", "0.16", "0.19", optional="deepspeed"),
}


def _version(text: str):  # -> packaging.version.Version of the release only (2.2.2+cu121 -> 2.2.2)
    from packaging.version import Version

    return Version(Version(text).base_version)


def _minor(text: str):
    v = _version(text)
    return v.major, v.minor


def installed(dist: str) -> str | None:
    """The installed version of a distribution (from its metadata: nothing is imported), or None."""
    if dist == "python":
        return ".".join(map(str, sys.version_info[:3]))
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return None


def judge(name: str, have: str | None, extra_traps: list[str] | None = None,
          broken: list[str] | None = None) -> Finding:
    """Place one installed version in the matrix. ``broken``: combinations that cannot work (fail)."""
    s = MATRIX[name]
    details = {"installed": have, "floor": s.floor, "clean": s.clean, "tested": s.tested}
    if have is None:
        if s.optional:
            return Finding("warn", f"{name} is not installed (optional: only needed for "
                           f"{'quant=8bit|4bit|fp4' if name == 'bitsandbytes' else 'the deepspeed group'})",
                           fix=f"pip install 'gemma-run[{s.optional}]' (or '{s.dist}>={s.floor}')", details=details)
        return Finding("fail", f"{name} is not installed", fix=f"pip install '{s.dist}>={s.floor}'", details=details)
    if broken:
        return Finding("fail", f"{name} {have}: " + "; ".join(broken), fix="see the finding", details=details)
    v = _version(have)
    traps = list(extra_traps or [])
    if v < _version(s.floor):
        return Finding("fail", f"{name} {have} is older than the oldest supported {s.floor}",
                       fix=f"pip install -U '{s.dist}>={s.clean}'", details=details)
    if v < _version(s.clean) and s.trap:
        traps.insert(0, s.trap)
    details["traps"] = traps
    if traps:
        return Finding("warn", f"{name} {have}: " + "; ".join(traps),
                       fix=f"pip install -U '{s.dist}>={s.clean}'" if v < _version(s.clean)
                       else "see the finding", details=details)
    if _minor(have) > _minor(s.tested):
        return Finding("warn", f"{name} {have} is newer than the newest tested ({s.tested}.x)",
                       fix=f"if something breaks, pin '{s.dist}<={s.tested}.*' and report it", details=details)
    return Finding("pass", f"{name} {have} (supported {s.floor} .. {s.tested}.x)", details=details)


def _check(name: str):
    def check(ctx: DoctorContext) -> Finding:
        traps, broken = _traps(name)
        return judge(name, installed(MATRIX[name].dist), traps, broken)

    return check


def _traps(name: str) -> tuple[list[str], list[str]]:
    """(traps, broken): problems that depend on two versions together, named on the library they surface in."""
    torch_v = installed("torch")
    traps: list[str] = []
    broken: list[str] = []
    if name == "torch" and torch_v is not None and _version(torch_v) < _version("2.3"):
        traps.append("torch < 2.3 has no torch.get_default_device: the shim torch.get_default_device is active")
        numpy_v = installed("numpy")
        if numpy_v is not None and _version(numpy_v) >= _version("2"):
            traps.append(f"numpy {numpy_v} >= 2 with a torch built against numpy 1.x: tensor<->numpy "
                         "conversions fail (pip install 'numpy<2')")
    tf = installed("transformers")
    if name == "transformers" and tf is not None and torch_v is not None \
            and _version(tf) >= _version("5") and _version(torch_v) < _version("2.6"):
        broken.append(f"transformers {tf} needs torch >= 2.6 (have {torch_v}): pip install -U 'torch>=2.6' or "
                     "'transformers<5'")
    return traps, broken


def model_family(ctx: DoctorContext) -> Finding:
    """The selected model's family against the installed transformers (gemma_run.loading.families)."""
    from gemma_run.doctor.smoke import smoke_cfg
    from gemma_run.loading import families
    from gemma_run.loading.checkpoint import architecture

    model_type = str(architecture(smoke_cfg(ctx).model).get("model_type", ""))  # the model or task.model
    family = families.family_of(model_type)
    details = {"model_type": model_type, "transformers": installed("transformers")}
    if family is None:
        return Finding("pass", f"model_type {model_type}: no family version constraint", details=details)
    details.update(needs=family.needs, clean=family.clean)
    refused = families.refusal(model_type)
    if refused is not None:
        return Finding("fail", refused.problem, fix=refused.fix, details=details)
    trap = families.warning(model_type)
    if trap is not None:
        return Finding("warn", trap, fix=f"pip install -U 'transformers>={family.clean}'", details=details)
    return Finding("pass", f"{family.name} loads and trains on transformers {details['transformers']} "
                   f"(needs >= {family.needs})", details=details)


CHECKS = [*((f"versions.{name}", _check(name), f"{name} against the supported matrix") for name in MATRIX),
          ("versions.model", model_family, "the installed transformers can load and train the selected model's "
                                            "family (Gemma 4 needs >= 5.5)")]
