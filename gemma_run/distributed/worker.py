"""The entry point of each launched rank: ``python -m gemma_run.distributed.worker <run_dir> [--resume-from DIR]``.

It reads the config the launching process resolved (never composes its own), exports the env group, applies the
shims, and runs the task's ``run_rank`` (the module of its ``_target_``: task=train trains, task=infer with
device_map=tp generates). Rank 0 alone writes the result (and the first
user-fixable error) for the launcher to read.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

log = logging.getLogger("gemma_run")


def read_config(run_dir: Path) -> DictConfig:
    """The resolved config, typed again by the schema (so enums and defaults behave as in the parent).

    Secret env values are [REDACTED] in the file: they are left out here, since this process inherited them
    from the launching one (exporting the placeholder would replace the real value)."""
    from gemma_run.app.env import REDACTED
    from gemma_run.distributed.launch import CONFIG
    from gemma_run.schema.config import RunConfig
    from gemma_run.schema.quant import schema_for

    saved = OmegaConf.load(run_dir / CONFIG)
    variables = saved.get("env", {}).get("vars") or {}
    for name in [k for k, v in variables.items() if v == REDACTED]:
        del variables[name]
    typed = OmegaConf.structured(RunConfig)
    typed.quant = OmegaConf.structured(schema_for(saved.get("quant", {}).get("_target_")))  # its backend's keys
    return OmegaConf.merge(typed, saved)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gemma_run.distributed.worker")
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--resume-from", type=Path, default=None)
    parser.add_argument("--local_rank", "--local-rank", type=int, default=None,
                        help="passed by the deepspeed launcher; ignored (LOCAL_RANK is in the environment)")
    args = parser.parse_args(argv)

    from gemma_run.app import env
    from gemma_run.app.context import RunContext, write_json
    from gemma_run.app.errors import GemmaRunError
    from gemma_run.app.plugins import ApplyShims, ExportEnv
    from gemma_run.distributed.launch import ERROR, RESULT
    from gemma_run.tasks import rank_entry

    rank = int(env.get("RANK", "0"))
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING, stream=sys.stderr,
                        format=f"[rank{rank}] %(asctime)s %(name)s %(levelname)s %(message)s")
    cfg = read_config(args.run_dir)
    ctx = RunContext(cfg=cfg, run_dir=args.run_dir, is_main_process=rank == 0)
    try:
        ExportEnv()(ctx)
        ApplyShims()(ctx)
        result = rank_entry(cfg.task)(cfg, args.run_dir, resume_from=args.resume_from, main=rank == 0)
    except GemmaRunError as e:
        if rank == 0:
            write_json(args.run_dir / ERROR, {"problem": e.problem, "key": e.key, "fix": e.fix})
        print(e.format(), file=sys.stderr)
        return e.exit_code
    if rank == 0:
        write_json(args.run_dir / RESULT, result)
    _shutdown()
    return 0


def _shutdown() -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
