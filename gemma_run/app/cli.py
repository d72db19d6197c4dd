"""The `gemma-run` entry point: check the overrides, compose with Hydra, run. Imports no torch."""

from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig

from gemma_run.app.api import env_var_overrides, setup
from gemma_run.app.errors import GemmaRunError
from gemma_run.app.redact import install_log_redaction


@hydra.main(version_base="1.3", config_path="pkg://gemma_run.conf", config_name="config")
def _app(cfg: DictConfig) -> float | None:
    from hydra.core.hydra_config import HydraConfig

    from gemma_run.app.pipeline import hydra_job, objective_value
    from gemma_run.app.start_dir import resolve_paths

    resolve_paths(cfg, HydraConfig.get().runtime.cwd)  # hydra.job.chdir=true: relative paths stay the user's
    return objective_value(cfg, hydra_job(cfg))


def main() -> None:
    setup()
    install_log_redaction()  # +env.vars.HF_TOKEN=... in no log line, Hydra's included
    from gemma_run.app.free_text import verbatim
    from gemma_run.app.precheck import precheck

    try:  # prompt=<any text>, prompt=- (stdin), prompt=@file: rewritten for Hydra's grammar, taken verbatim
        sys.argv[1:] = verbatim(sys.argv[1:], read_input=True)
    except GemmaRunError as e:
        print(e.format(), file=sys.stderr)
        sys.exit(e.exit_code)
    sys.argv[1:] = env_var_overrides(sys.argv[1:])
    precheck(sys.argv[1:])
    _app()


if __name__ == "__main__":
    main()
