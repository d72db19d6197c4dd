"""Model families and the transformers release that can load each, checked before anything loads.

An older transformers does not know a new family's ``model_type`` and fails deep inside ``AutoConfig`` with
"does not recognize this architecture"; here the run is refused at config time with the version that fixes it
(and the doctor names it as ``versions.model``). ``clean`` is the first release without a known trap for the
family; between ``needs`` and ``clean`` the run goes on with a warning from the doctor.

Sources of the numbers: transformers' release notes (v5.5.0 adds Gemma 4; v5.5.2 fixes generation and training
with ``use_cache=False`` of the layers that share KV; v5.5.3 fixes ``device_map`` placement of Gemma 4). For
the Gemma 4 12B unified model, 5.10.0 is the floor that downstream projects test it with (5.8.1 is reported too
old); the exact first release is not pinned down. peft has no release constraint for the language models:
their projections are plain ``nn.Linear``; LoRA on the MoE experts' 3-D tensors uses peft's
``target_parameters``.
"""

from __future__ import annotations

from dataclasses import dataclass

from gemma_run.app.errors import ConfigError


@dataclass(frozen=True)
class Family:
    name: str
    model_types: tuple[str, ...]  # the multimodal wrapper's and the language model's
    needs: str  # the first transformers release with its model classes
    clean: str  # the first release without a known trap for it
    trap: str = ""  # what goes wrong between needs and clean


FAMILIES = (
    Family("Gemma 4", ("gemma4", "gemma4_text"), "5.5.0", "5.5.3",
           trap="the layers that share KV fail with use_cache=False (training) before 5.5.2, and device_map=auto "
                "misplaces Gemma 4 modules before 5.5.3"),
    Family("Gemma 4 unified", ("gemma4_unified", "gemma4_unified_text"), "5.10.0", "5.10.0"),
)


def family_of(model_type: str) -> Family | None:
    return next((f for f in FAMILIES if model_type in f.model_types), None)


def _older(have: str, than: str) -> bool:
    from packaging.version import Version

    return Version(Version(have).base_version) < Version(than)


def transformers_version() -> str | None:
    from gemma_run.doctor.versions import installed

    return installed("transformers")


def refusal(model_type: str, key: str = "model") -> ConfigError | None:
    """The one error for a family the installed transformers cannot load, or None."""
    family, have = family_of(model_type), transformers_version()
    if family is None or have is None or not _older(have, family.needs):
        return None
    return ConfigError(f"{family.name} (model_type {model_type}) needs transformers >= {family.needs}; "
                       f"transformers {have} is installed and cannot load it", key=key,
                       fix=f"pip install -U 'transformers>={family.clean}'")


def warning(model_type: str) -> str | None:
    """The known trap of the installed transformers for this family (loads, but something fails), or None."""
    family, have = family_of(model_type), transformers_version()
    if family is None or have is None or _older(have, family.needs) or not _older(have, family.clean):
        return None
    return f"transformers {have} loads {family.name}, but {family.trap}"
