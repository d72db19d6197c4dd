"""The `gemma-run` entry point: check the overrides, compose with Hydra, run. Imports no torch."""

from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig

from gemma_run.api import setup


@hydra.main(version_base="1.3", config_path="pkg://gemma_run.conf", config_name="config")
def _app(cfg: DictConfig) -> float | None:
    from gemma_run.pipeline import hydra_job, objective_value

    return objective_value(cfg, hydra_job(cfg))


def main() -> None:
    setup()
    from gemma_run.precheck import precheck

    precheck(sys.argv[1:])
    _app()


if __name__ == "__main__":
    main()
