"""The same run from Python (notebooks, tests): compose a config, then run it.

    from gemma_run import compose, run
    cfg = compose(["model=tiny_gemma3", "prompt=Hello"])
    result = run(cfg, "outputs/notebook")
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

CONFIG_MODULE = "gemma_run.conf"


def setup() -> None:
    """Register the schemas and resolvers (idempotent, cheap: no torch)."""
    from gemma_run import schema
    from gemma_run.app import resolvers

    schema.register()
    resolvers.register()


# env.vars is a map the env groups fill: `+env.vars.NCCL_DEBUG=WARN` (add) fails where the group already sets the
# variable (env=rtx3090x3), `env.vars.X=1` (replace) where it does not. Either form adds or replaces (Hydra's `++`).
_ENV_VAR = re.compile(r"^\+{0,2}(env\.vars\.[^=]+=)")


def env_var_overrides(overrides: list[str]) -> list[str]:
    """The overrides with every `env.vars.NAME=value` (with +, ++ or neither) as `++env.vars.NAME=value`."""
    return [_ENV_VAR.sub(r"++\1", o) for o in overrides]


def compose(overrides: list[str] | None = None, config_dir: str | Path | None = None) -> DictConfig:
    """Compose the run config exactly as the command line would (same defaults, schemas and overrides).

    Free-text keys (prompt, system_prompt, generation.stop) take any text verbatim, as on the command line; a
    value already quoted for Hydra ('...') is kept as Hydra reads it.
    """
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    from gemma_run.app.free_text import verbatim

    setup()
    overrides = env_var_overrides(verbatim(list(overrides or []), keep_quoted=True))
    if config_dir is not None:
        overrides.append(f"hydra.searchpath=[file://{Path(config_dir).resolve()}]")
    GlobalHydra.instance().clear()
    with initialize_config_module(config_module=CONFIG_MODULE, version_base="1.3"):
        return hydra_compose(config_name="config", overrides=overrides)


def run(cfg: DictConfig, run_dir: str | Path) -> dict[str, Any]:
    """Run a composed config in ``run_dir`` through the plugin pipeline; returns the result dict."""
    from gemma_run.app.pipeline import run as run_pipeline

    return run_pipeline(cfg, run_dir)
