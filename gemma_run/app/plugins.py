"""The built-in plugins. Each is one step of the pipeline, called with the run's context, in `order`.

A user's plugin is a class named by `_target_` under `plugins:`; it is instantiated with the entry's keys
(less `order`) and called as ``plugin(ctx)`` with the :class:`~gemma_run.app.context.RunContext`.
"""

from __future__ import annotations

import importlib
import logging
import sys

from hydra.utils import get_method

from gemma_run.app import env as env_vars
from gemma_run.app.context import RunContext
from gemma_run.app.errors import ConfigError, GemmaRunError, raise_all

log = logging.getLogger(__name__)

HEAVY_MODULES = ("torch", "transformers", "peft", "deepspeed", "bitsandbytes")


class Validate:
    """Every problem in the config found without importing anything heavy, reported together."""

    def __call__(self, ctx: RunContext) -> None:
        from gemma_run.app.validation import validate

        raise_all(validate(ctx.cfg))


class ExportEnv:
    """Export the env group before torch, CUDA or NCCL read their variables."""

    def __call__(self, ctx: RunContext) -> None:
        early = [m for m in HEAVY_MODULES if m in sys.modules]
        if early:
            log.warning(
                "env: %s already imported in this process; variables they read at import "
                "(CUDA_VISIBLE_DEVICES, OMP_NUM_THREADS, ...) may not take effect", ", ".join(early)
            )
        done = env_vars.export(dict(ctx.cfg.env.vars), override=ctx.cfg.env.override)
        for item in done:
            extra = f" (was {item.previous})" if item.action == "replaced" else ""
            kept = " (already set; env.override=false keeps it)" if item.action == "kept" else ""
            log.info("env: %s=%s%s%s", item.name, item.value, extra, kept)
        ctx.result["env"] = {i.name: i.value for i in done}
        ctx.result["env_exported_before"] = [m for m in HEAVY_MODULES if m not in early]


class ApplyShims:
    """Apply the process-start patches this stack needs (gemma_run.patches; the later phases are applied where
    the run reaches them: loading, peft, generation)."""

    def __call__(self, ctx: RunContext) -> None:
        from gemma_run.patches import apply_all

        reports = apply_all()
        ctx.result["shims"] = {r.name: r.status for r in reports}
        applied = [r.name for r in reports if r.status == "applied"]
        log.info("shims: %s", ", ".join(applied) if applied else "none needed on this stack")


class Dispatch:
    """Call the task's `_target_` as fn(cfg, run_dir) and keep its result."""

    def __call__(self, ctx: RunContext) -> None:
        target = ctx.cfg.task._target_
        try:
            fn = get_method(target)
        except Exception as e:  # Hydra wraps import errors; name the key and the target
            raise ConfigError(f"cannot import the task {target!r}: {e}", key="task._target_",
                              fix="check the module path, or pick a task with task=<name>") from e
        out = fn(ctx.cfg, ctx.run_dir)
        if out:
            ctx.result.update(out)


def build_pipeline(plugins_cfg: dict) -> list[tuple[str, int, object]]:
    """Instantiate the configured plugins in ascending order; an unimportable `_target_` is named."""
    from hydra.utils import instantiate

    entries = []
    for name, spec in plugins_cfg.items():
        if spec is None:
            continue
        spec = dict(spec)
        order = spec.pop("order", 50)
        target = spec.get("_target_")
        if not target:
            raise ConfigError(f"plugin {name!r} has no _target_", key=f"plugins.{name}",
                              fix=f"+plugins.{name}={{_target_:my_module.MyPlugin,order:25}}")
        module_name = target.rpartition(".")[0]
        try:
            importlib.import_module(module_name)
        except ImportError as e:
            raise ConfigError(f"cannot import plugin {name!r} ({target}): {e}", key=f"plugins.{name}._target_",
                              fix="install the module or correct the dotted path") from e
        try:
            plugin = instantiate(spec, _convert_="all")
        except Exception as e:
            raise ConfigError(f"cannot build plugin {name!r} ({target}): {e}", key=f"plugins.{name}",
                              fix="check its arguments") from e
        if not callable(plugin):
            raise GemmaRunError(f"plugin {name!r} ({target}) is not callable", key=f"plugins.{name}._target_",
                                fix="a plugin is a class with __call__(self, ctx)")
        entries.append((name, int(order), plugin))
    return sorted(entries, key=lambda e: e[1])
