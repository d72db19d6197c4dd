"""Checks of the composed config that need nothing heavy: every problem found, reported together.

The schema already caught unknown keys and wrong types; these are the rules between values. A task module
may add its own with ``validate(cfg) -> list[GemmaRunError]``.
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from gemma_run.app.errors import ConfigError, GemmaRunError

DTYPES = ("auto", "bfloat16", "float16", "float32")


def _model(cfg: DictConfig) -> list[GemmaRunError]:
    from gemma_run.loading.checkpoint import local_path, path_problems

    m, problems = cfg.model, []
    if m.weights.name == "pretrained" and not m.path and not m.hub_id:
        problems.append(ConfigError(f"model {m.name!r} has weights=pretrained but neither path nor hub_id",
                                    key="model.path", fix="model.path=/dir/with/safetensors, or model.weights=random"))
    problems.extend(path_problems(m))
    if m.dtype not in DTYPES:
        problems.append(ConfigError(f"model.dtype={m.dtype!r} is not one of {', '.join(DTYPES)}",
                                    key="model.dtype", fix="model.dtype=bfloat16"))
    if local_path(m) is None and not m.config.get("model_type"):  # a checkpoint brings its own config.json
        problems.append(ConfigError(f"model {m.name!r} has no config.model_type", key="model.config.model_type",
                                    fix="copy the architecture from the checkpoint's config.json into model.config"))
    problems.extend(_family(m))
    return problems


def _family(m: DictConfig) -> list[GemmaRunError]:
    """A model family the installed transformers cannot load (Gemma 4 before 5.5): one error, before loading."""
    from gemma_run.loading.checkpoint import architecture
    from gemma_run.loading.families import refusal

    try:
        model_type = str(architecture(m).get("model_type", ""))
    except GemmaRunError:  # a bad model.path: path_problems reported it
        return []
    found = refusal(model_type, key="model")
    return [found] if found else []


def _quant(cfg: DictConfig) -> list[GemmaRunError]:
    from gemma_run import quant

    try:
        return quant.from_cfg(cfg.quant).problems()
    except GemmaRunError as e:  # a _target_ that does not import
        return [e]


def _device_map(cfg: DictConfig) -> list[GemmaRunError]:
    d = cfg.device_map
    if d.strategy.name == "explicit" and not d.map:
        return [ConfigError("device_map=explicit needs a map of module -> device", key="device_map.map",
                            fix="'+device_map.map={model.embed_tokens:0,model.layers:0,model.norm:0,lm_head:0}'")]
    from gemma_run.distributed.parallel import validate as tp_problems

    return tp_problems(cfg)  # device_map=tp: launcher, quant, head counts (gemma_run/distributed/parallel.py)


def _generation(cfg: DictConfig) -> list[GemmaRunError]:
    g, problems = cfg.generation, []
    if g.max_new_tokens <= 0:
        problems.append(ConfigError(f"generation.max_new_tokens={g.max_new_tokens} must be > 0",
                                    key="generation.max_new_tokens", fix="generation.max_new_tokens=64"))
    if g.do_sample and g.temperature <= 0:
        problems.append(ConfigError(f"generation.temperature={g.temperature} must be > 0 when sampling",
                                    key="generation.temperature", fix="generation.temperature=0.7, or do_sample=false"))
    if cfg.batch_size < 1:
        problems.append(ConfigError(f"batch_size={cfg.batch_size} must be >= 1", key="batch_size", fix="batch_size=8"))
    engine = getattr(g.engine, "value", g.engine)
    if g.compile and engine == "hf" and g.cache_implementation is None:  # gemma_run.infer.generate.cache_kwargs
        problems.append(ConfigError("generation.compile=true needs a static KV cache (compiled steps need fixed "
                                    "shapes)", key="generation.compile",
                                    fix="add generation.cache_implementation=static, or generation.engine=fast"))
    if engine == "fast" and g.cache_implementation is not None:
        problems.append(ConfigError("generation.cache_implementation chooses generate()'s cache; the fast engine "
                                    "always uses its own static cache", key="generation.cache_implementation",
                                    fix="drop generation.cache_implementation, or generation.engine=hf"))
    return problems


def _task(cfg: DictConfig) -> list[GemmaRunError]:
    """The task's own facts (schema/tasks.py) that other steps act on."""
    plan_as = cfg.task.get("plan_as")
    if plan_as not in (None, "infer", "train"):
        return [ConfigError(f"task.plan_as={plan_as!r} is not infer, train or null", key="task.plan_as",
                            fix="task.plan_as=infer (or train; null skips the preflight)")]
    return []


def _walk_added(node: DictConfig, prefix: str) -> list[str]:
    """Dotted keys under ``node`` that no schema declares (only a `+key=value` puts them there). A dict-typed
    field (env.vars, plugins, model.config, device_map.map, ...) is an open map: any key is its own."""
    fields = schema_fields(node)
    if fields is None:
        return []
    out = []
    for key in node.keys():
        path = f"{prefix}{key}"
        if key not in fields:
            out.append(path)
            continue
        child = node._get_node(key)
        if isinstance(child, DictConfig) and not child._is_missing() and not child._is_none():
            out.extend(_walk_added(child, path + "."))
    return out


def schema_fields(node: DictConfig) -> set[str] | None:
    """The field names of the dataclass typing ``node``; None for an open map (a plain dict)."""
    import dataclasses

    from omegaconf import OmegaConf

    kind = OmegaConf.get_type(node)
    if kind is None or not dataclasses.is_dataclass(kind):
        return None
    return {f.name for f in dataclasses.fields(kind)}


def _show(value: object) -> str:
    """A value as it is written on the command line."""
    from omegaconf import OmegaConf

    if OmegaConf.is_config(value):
        value = OmegaConf.to_container(value)  # type: ignore[arg-type]
    if isinstance(value, bool) or value is None:
        return "null" if value is None else str(value).lower()
    return str(value).replace("'", "") if isinstance(value, dict | list) else str(value)


def unknown_keys(cfg: DictConfig) -> list[GemmaRunError]:
    """Keys that a `+key=value` added outside every schema: nothing reads them, so the run would ignore them.

    Each is refused with the nearest real key and the value given (``+generation.temprature=0.5`` ->
    ``generation.temperature=0.5``). Keys inside open maps are the user's own and are kept.
    """
    from omegaconf import OmegaConf

    from gemma_run.app.precheck import nearest_key

    added = _walk_added(cfg, "")
    if not added:
        return []
    known = OmegaConf.create(OmegaConf.to_container(cfg))  # untyped, so the added keys can be taken out
    for key in added:
        parent, _, leaf = key.rpartition(".")
        node = OmegaConf.select(known, parent) if parent else known
        del node[leaf]
    problems: list[GemmaRunError] = []
    for key in added:
        value = _show(OmegaConf.select(cfg, key, throw_on_missing=False))
        near = nearest_key(known, key)
        near = None if near and key.startswith(near + ".") else near  # a parent is no spelling of the key
        hint = f" (did you mean `{near}`?)" if near else ""
        fix = f"{near}={value}" if near else "see `gemma-run --cfg job` for the keys"
        problems.append(ConfigError(f"unknown key `{key}`{hint}: no schema has it, so the run would ignore it; `+` "
                                    "adds new keys only inside open maps (env.vars, plugins, model.config, ...)",
                                    key=key, fix=fix))
    return problems


def option_file(group: str) -> tuple[str | None, str | None]:
    """(option chosen for ``group``, the YAML file it came from) when Hydra composed this run; else Nones."""
    from importlib import resources

    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return None, None
    runtime = HydraConfig.get().runtime
    choice = runtime.choices.get(group)
    if not choice:
        return None, None
    for source in runtime.config_sources:
        if source.schema == "file":
            candidate = Path(source.path) / group / f"{choice}.yaml"
            if candidate.is_file():
                return choice, str(candidate)
        elif source.schema == "pkg":
            try:
                found = resources.files(source.path).joinpath(f"{group}/{choice}.yaml")
            except ModuleNotFoundError:
                continue
            if found.is_file():
                return choice, str(found)
    return choice, None


def missing_values(cfg: DictConfig) -> list[GemmaRunError]:
    """Mandatory keys (``???`` in a schema) that no config file or override set, naming the option file to fix
    (a user's model YAML without ``name``)."""
    from omegaconf import OmegaConf

    problems: list[GemmaRunError] = []
    for key in sorted(OmegaConf.missing_keys(cfg)):
        group, _, leaf = str(key).partition(".")
        choice, file = option_file(group) if leaf else (None, None)
        where = f"{group} option `{choice}`" + (f" ({file})" if file else "") if choice else f"`{group}`"
        value = choice if leaf == "name" and choice else "<value>"
        fix = f"add `{leaf or key}: {value}` to {file or 'that file'}" if leaf else ""
        fix = f"{fix}, or pass {key}={value}" if fix else f"{key}={value}"
        problems.append(ConfigError(f"{where} has no `{leaf or key}`, which every {group} needs", key=str(key),
                                    fix=fix))
    return problems


CHECKS = (unknown_keys, _model, _quant, _device_map, _generation, _task)


def prepare(cfg: DictConfig) -> dict:
    """Before any plugin: every mandatory value is set, and a loaded ``model.path`` becomes the run's model (its
    config.json and name, gemma_run.loading.checkpoint.adopt). Returns result.json's model keys."""
    from gemma_run.app.errors import raise_all
    from gemma_run.loading.checkpoint import adopt

    raise_all(missing_values(cfg))
    return adopt(cfg)


def validate(cfg: DictConfig) -> list[GemmaRunError]:
    problems: list[GemmaRunError] = missing_values(cfg)
    if problems:
        return problems  # the other checks read these values
    for check in CHECKS:
        problems.extend(check(cfg))
    from gemma_run.tasks import module_of

    try:
        module = module_of(cfg.task)
    except ImportError:
        return problems  # Dispatch names the broken target
    task_check = getattr(module, "validate", None)
    if task_check is not None:
        problems.extend(task_check(cfg))
    return problems
