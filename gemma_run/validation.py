"""Checks of the composed config that need nothing heavy: every problem found, reported together.

The schema already caught unknown keys and wrong types; these are the rules between values. A task module
may add its own with ``validate(cfg) -> list[GemmaRunError]``.
"""

from __future__ import annotations

import importlib

from omegaconf import DictConfig

from gemma_run.errors import ConfigError, GemmaRunError

DTYPES = ("auto", "bfloat16", "float16", "float32")


def _model(cfg: DictConfig) -> list[GemmaRunError]:
    m, problems = cfg.model, []
    if m.weights.name == "pretrained" and not m.path and not m.hub_id:
        problems.append(ConfigError(f"model {m.name!r} has weights=pretrained but neither path nor hub_id",
                                    key="model.path", fix="model.path=/dir/with/safetensors, or model.weights=random"))
    if m.dtype not in DTYPES:
        problems.append(ConfigError(f"model.dtype={m.dtype!r} is not one of {', '.join(DTYPES)}",
                                    key="model.dtype", fix="model.dtype=bfloat16"))
    if not m.config.get("model_type"):
        problems.append(ConfigError(f"model {m.name!r} has no config.model_type", key="model.config.model_type",
                                    fix="copy the architecture from the checkpoint's config.json into model.config"))
    return problems


def _quant(cfg: DictConfig) -> list[GemmaRunError]:
    q = cfg.quant
    allowed = {"none": (16,), "bitsandbytes": (8, 4), "torchao": (4,)}[q.backend.name]
    if q.bits not in allowed:
        return [ConfigError(f"quant.bits={q.bits} does not exist for quant.backend={q.backend.name}",
                            key="quant.bits", fix=f"quant.bits={allowed[0]} (or pick quant=none|8bit|4bit|fp4|int4)")]
    from gemma_run.loading.quantization import torchao_problems

    if q.backend.name != "torchao" and q.lm_head != "keep":
        return [ConfigError(f"quant.lm_head={q.lm_head} is quant=int4's option (torchao); quant={q.name} keeps the "
                            "output layer in the model's dtype", key="quant.lm_head",
                            fix="quant=int4 quant.lm_head=int4, or quant.lm_head=keep")]
    return torchao_problems(q) if q.backend.name == "torchao" else []


def _device_map(cfg: DictConfig) -> list[GemmaRunError]:
    d = cfg.device_map
    if d.strategy.name == "explicit" and not d.map:
        return [ConfigError("device_map=explicit needs a map of module -> device", key="device_map.map",
                            fix="'+device_map.map={model.embed_tokens:0,model.layers:0,model.norm:0,lm_head:0}'")]
    from gemma_run.parallel import validate as tp_problems

    return tp_problems(cfg)  # device_map=tp: launcher, quant, head counts (gemma_run/parallel.py)


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


CHECKS = (_model, _quant, _device_map, _generation)


def validate(cfg: DictConfig) -> list[GemmaRunError]:
    problems: list[GemmaRunError] = []
    for check in CHECKS:
        problems.extend(check(cfg))
    module_name = str(cfg.task._target_).rpartition(".")[0]
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        return problems  # Dispatch names the broken target
    task_check = getattr(module, "validate", None)
    if task_check is not None:
        problems.extend(task_check(cfg))
    return problems
