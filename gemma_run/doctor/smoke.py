"""A real smoke run through the normal loading path (gemma_run.loading.load): load, generate on each device,
spread over all GPUs with device_map=auto, and one LoRA training step.

The model is the run's ``model`` group, or ``task.model``: another model option (``gemma3_1b``) or a checkpoint
directory. Checks share loaded models through ``ctx.cache``; when ``smoke.load`` already reported that the
model does not load, the later smoke checks skip instead of repeating the same failure.
"""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path
from typing import Any

from omegaconf import open_dict

from gemma_run.app.errors import GemmaRunError
from gemma_run.doctor.base import DoctorContext, Finding, gpu_count

PROMPT = "The capital of France is"
TRAIN_TEXT = "The quick brown fox jumps over the lazy dog. Gemma is a family of lightweight open models."


def _looks_like_path(value: str) -> bool:
    return "/" in value or value.startswith((".", "~")) or Path(value).expanduser().is_dir()


def _compose_model(name: str) -> Any:
    """The model option ``name`` composed like `model=<name>` on the command line (same search path)."""
    from hydra.core.global_hydra import GlobalHydra

    try:
        if GlobalHydra.instance().is_initialized():  # inside the CLI: Hydra's own search path (--config-dir too)
            from hydra import compose

            return compose(config_name="config", overrides=[f"model={name}"]).model
        from gemma_run.app.api import compose as api_compose

        return api_compose([f"model={name}"]).model
    except Exception as e:  # Hydra's MissingConfigException and friends
        raise GemmaRunError(f"task.model={name!r} is neither a model option nor a checkpoint directory: "
                            f"{str(e).splitlines()[0]}", key="task.model",
                            fix="task.model=<a model option (gemma-run --info), e.g. tiny_gemma3> or "
                                "task.model=/dir/of/ckpt",
                            ) from e


def _model_from_path(base: Any, value: str) -> Any:
    """A model node for a checkpoint directory: its architecture type read from its config.json."""
    path = Path(value).expanduser()
    node = copy.deepcopy(base)
    model_type = ""
    if (path / "config.json").is_file():
        model_type = json.loads((path / "config.json").read_text()).get("model_type", "")
    with open_dict(node):
        node.name = path.name or str(path)
        node.path = str(path)
        node.hub_id = None
        node.weights = "pretrained"
        node.config = {"model_type": model_type} if model_type else {}
    return node


def smoke_cfg(ctx: DoctorContext) -> Any:
    """The run config the smoke checks load: the run's own, or with ``task.model`` in place of ``model``."""
    if "smoke_cfg" in ctx.cache:
        return ctx.cache["smoke_cfg"]
    choice = ctx.cfg.task.get("model")
    cfg = ctx.cfg
    if choice:
        node = _model_from_path(cfg.model, choice) if _looks_like_path(choice) else _compose_model(choice)
        cfg = copy.deepcopy(cfg)
        with open_dict(cfg):
            cfg.model = node
    ctx.cache["smoke_cfg"] = cfg
    return cfg


def devices() -> list[str]:
    n = gpu_count()
    return [f"cuda:{i}" for i in range(n)] if n else ["cpu"]


def _load(ctx: DoctorContext, device_map: Any):  # -> Loaded
    from gemma_run.loading import load

    return load(smoke_cfg(ctx), device_map=device_map)


def _primary(ctx: DoctorContext):  # -> Loaded, loaded once on the first device and shared
    if "primary" not in ctx.cache:
        ctx.cache["primary"] = _load(ctx, {"": devices()[0]})
    return ctx.cache["primary"]


def _load_failed(ctx: DoctorContext) -> Finding | None:
    if ctx.cache.get("load_failed"):
        return Finding("skip", "the model did not load (see smoke.load)", fix="fix smoke.load first")
    return None


def _release() -> None:
    """Give back the memory of models the caller has just dropped (``del``) before the next one loads."""
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def load_check(ctx: DoctorContext) -> Finding:
    cfg = smoke_cfg(ctx)
    try:
        loaded = _primary(ctx)
    except Exception:
        ctx.cache["load_failed"] = True
        raise  # the registry turns it into a fail (a GemmaRunError keeps its key and fix)
    params = sum(p.numel() for p in loaded.model.parameters())
    details = {"model": cfg.model.name, "path": str(loaded.path), "dtype": loaded.dtype, "parameters": params,
               "load_seconds": loaded.load_seconds, "bytes_per_device": loaded.bytes_per_device,
               "class": type(loaded.model).__name__}
    return Finding("pass", f"{cfg.model.name} ({type(loaded.model).__name__}, {params / 1e6:.2f} M params, "
                   f"{loaded.dtype}) loaded on {devices()[0]} in {loaded.load_seconds:.1f} s", details=details)


def _encode(tok: Any, text: str, device: Any) -> dict[str, Any]:
    """Token ids and attention mask on ``device``. Only these two, as task=infer passes: transformers 4.53's
    tokenizers also return token_type_ids, which its generate() rejects for a text-only model."""
    enc = tok(text, return_tensors="pt")
    return {k: enc[k].to(device) for k in ("input_ids", "attention_mask") if k in enc}


def _generate(loaded: Any, new_tokens: int) -> dict[str, Any]:
    """Greedy generation of exactly ``new_tokens`` with the inputs on the model's input device."""
    import torch

    tok, model = loaded.tokenizer, loaded.model
    device = loaded.input_device
    inputs = _encode(tok, PROMPT, device)
    with torch.no_grad():
        logits = model(**inputs).logits
        start = time.perf_counter()
        out = model.generate(**inputs, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                             pad_token_id=tok.pad_token_id)
        seconds = time.perf_counter() - start
    new = out[0, inputs["input_ids"].shape[1]:]
    return {"input_device": str(device), "inputs_on": str(inputs["input_ids"].device),
            "new_tokens": int(new.numel()), "text": tok.decode(new, skip_special_tokens=True),
            "logits_finite": bool(torch.isfinite(logits).all()), "logits": logits.float().cpu(),
            "tokens_per_second": round(new.numel() / seconds, 1) if seconds > 0 else None}


def generate_check(ctx: DoctorContext) -> Finding:
    import torch

    if (skip := _load_failed(ctx)) is not None:
        return skip
    n_new = int(ctx.cfg.task.new_tokens)
    rows, problems = [], []
    for dev in devices():
        first = dev == devices()[0]
        loaded = _primary(ctx) if first else _load(ctx, {"": dev})
        r = _generate(loaded, n_new)
        r.pop("logits")
        r["device"] = dev
        rows.append(r)
        if torch.device(r["input_device"]) != torch.device(dev) or r["inputs_on"] != r["input_device"]:
            problems.append(f"{dev}: inputs went to {r['inputs_on']}, the model's input device is {r['input_device']}")
        if r["new_tokens"] != n_new:
            problems.append(f"{dev}: {r['new_tokens']} new tokens, asked for {n_new}")
        if not r["logits_finite"]:
            problems.append(f"{dev}: non-finite logits")
        del loaded
        if not first:
            _release()
    details = {"prompt": PROMPT, "devices": rows}
    if problems:
        return Finding("fail", "; ".join(problems), fix="model.dtype=float32 rules out a dtype overflow; otherwise "
                       "report it with report.json", details=details)
    speed = ", ".join(f"{r['device']} {r['tokens_per_second']} tok/s" for r in rows)
    return Finding("pass", f"{n_new} tokens generated on each of {len(rows)} device(s), inputs on the model's "
                   f"device: {speed}", details=details)


def spread_check(ctx: DoctorContext) -> Finding:
    """device_map=auto over all visible GPUs: where parameters went, inputs on the embedding's device, and the
    same logits as the one-GPU model."""

    n = gpu_count()
    if n < 2:
        return Finding("skip", f"needs >= 2 GPUs to spread a model (found {n})", fix="run on a machine with several "
                       "GPUs")
    if (skip := _load_failed(ctx)) is not None:
        return skip
    reference = _generate(_primary(ctx), 1)["logits"]
    ctx.cache.pop("primary")  # free GPU 0 before the spread copy loads (smoke.lora loads its own)
    _release()
    loaded = _load(ctx, "auto")
    try:
        used = sorted(d for d in loaded.bytes_per_device if d.startswith("cuda"))
        r = _generate(loaded, int(ctx.cfg.task.new_tokens))
        logits = r.pop("logits")
        diff = float((logits - reference).norm() / reference.norm())
        hf_map = getattr(loaded.model, "hf_device_map", {})
        layers = len([k for k in hf_map if ".layers." in k]) or None
        details = {"bytes_per_device": loaded.bytes_per_device, "hf_device_map": {k: str(v) for k, v in hf_map.items()},
                   "input_device": r["input_device"], "relative_logit_difference": diff, "generation": r}
    finally:
        del loaded
        _release()
    text = (f"device_map=auto put parameters on {len(used)}/{n} GPUs ({', '.join(used)}); inputs on "
            f"{r['input_device']}; logits vs one GPU differ by {diff:.1e}")
    if r["inputs_on"] != r["input_device"] or not r["logits_finite"] or diff > 1e-2:
        return Finding("fail", text, fix="report it with report.json (the spread model disagrees with one GPU)",
                       details=details)
    if len(used) < 2:
        return Finding("fail", text, fix="accelerate kept the whole model on one GPU: check device_map.max_memory "
                       "and that every GPU has free memory", details=details)
    if len(used) < n:
        return Finding("warn", text + f" (the model has too few layers{f' ({layers})' if layers else ''} for "
                       f"{n} GPUs)", fix="task.model=<a bigger model option> to fill every GPU", details=details)
    return Finding("pass", text, details=details)


def lora_check(ctx: DoctorContext) -> Finding:
    """One LoRA (peft) training step: the loss is finite, the adapter weights change, the base does not."""
    if (skip := _load_failed(ctx)) is not None:
        return skip
    import torch
    from peft import LoraConfig, get_peft_model

    loaded = ctx.cache.pop("primary", None) or _load(ctx, {"": devices()[0]})  # peft edits the model in place
    model, tok = loaded.model, loaded.tokenizer
    # q_proj's weight is kept (as base_layer.weight) when peft wraps the layer: it must not move.
    base_param = next((p for n, p in model.named_parameters() if n.endswith("q_proj.weight")), None)
    base_before = None if base_param is None else base_param.detach().float().clone()
    peft_model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules="all-linear",
                                                  task_type="CAUSAL_LM"))
    lora = {n: p for n, p in peft_model.named_parameters() if p.requires_grad}
    # lora_B starts at zero, so the first step moves B only (A's gradient is B^T...= 0; no weight decay).
    lora_b = {n: p for n, p in lora.items() if "lora_B" in n}
    before = {n: p.detach().float().clone() for n, p in lora_b.items()}
    batch = _encode(tok, TRAIN_TEXT, loaded.input_device)
    peft_model.train()
    opt = torch.optim.AdamW(lora.values(), lr=1e-3, weight_decay=0.0)
    out = peft_model(**batch, labels=batch["input_ids"])
    out.loss.backward()
    loss = out.loss.detach()
    opt.step()
    opt.zero_grad()
    with torch.no_grad():
        loss_after = float(peft_model(**batch, labels=batch["input_ids"]).loss)
    changed = sum(1 for n, p in lora_b.items() if not torch.equal(p.detach().float(), before[n]))
    base_same = None if base_param is None else bool(torch.equal(base_param.detach().float(), base_before))
    trainable = sum(p.numel() for p in lora.values())
    details = {"loss": float(loss), "loss_after_step": loss_after, "lora_tensors": len(lora),
               "lora_B_tensors": len(lora_b), "lora_B_changed": changed, "trainable_parameters": trainable,
               "base_unchanged": base_same,
               "device": str(loaded.input_device), "dtype": loaded.dtype}
    n_b = len(lora_b)
    del loaded, model, peft_model, opt, lora, lora_b, base_param
    _release()
    text = (f"1 step on {details['device']}: loss {float(loss):.3f} -> {loss_after:.3f}, {changed}/{n_b} "
            f"LoRA B matrices changed ({trainable / 1e3:.1f} k trainable), base weights "
            f"{'unchanged' if base_same else 'CHANGED' if base_same is False else 'not compared'}")
    if not torch.isfinite(loss) or not n_b or changed < n_b or base_same is False:
        return Finding("fail", text, fix="model.dtype=float32 rules out a dtype problem; check the peft version "
                       "(versions.peft)", details=details)
    return Finding("pass", text, details=details)


def fast_engine_check(ctx: DoctorContext) -> Finding:
    """The fast generation engine (generation.engine=auto's choice on a GPU) against generate() on the smoke
    model: greedy tokens, first device. On a GPU as auto runs it (compiled, recorded as a CUDA graph); eager on a
    CPU."""
    import torch

    from gemma_run.infer.engine import Decoder, EngineOptions, choose_engine, fused_projections, generate, unsupported

    if (skip := _load_failed(ctx)) is not None:
        return skip
    loaded = _primary(ctx)
    why = unsupported(loaded.model, ctx.cfg.generation)
    if why:
        return Finding("skip", f"the fast engine cannot run here: {why}", fix="generation.engine=hf is used instead")
    on_gpu = loaded.input_device.type == "cuda"
    engine = choose_engine(ctx.cfg.generation, loaded.model) if on_gpu else None
    compiled, graph, attention, fuse = ((engine.compile, engine.graph, engine.attention, engine.fuse) if engine
                                        else (False, False, None, False))
    n_new = int(ctx.cfg.task.new_tokens)
    tok, model = loaded.tokenizer, loaded.model
    inputs = _encode(tok, PROMPT, loaded.input_device)
    kwargs = {"max_new_tokens": n_new, "min_new_tokens": n_new, "do_sample": False,
              "eos_token_id": [tok.eos_token_id], "pad_token_id": tok.pad_token_id or 0}
    options = EngineOptions("fast", compiled, bool(ctx.cfg.generation.exact), graph=graph, attention=attention,
                            fuse=fuse)
    try:
        with torch.inference_mode():
            ref = model.generate(**inputs, **kwargs)
            start = time.perf_counter()
            got = generate(model, inputs["input_ids"], inputs["attention_mask"], kwargs, options)
            seconds = time.perf_counter() - start
        fused = fused_projections.count(model)
    finally:
        Decoder.of(model).restore()  # the model as loaded again for the next checks (smoke.lora trains it)
    same = [int(a) == int(b) for a, b in zip(ref[0].tolist(), got[0].tolist(), strict=False)]
    agree = same.index(False) - inputs["input_ids"].shape[1] if False in same else n_new
    details = {"compiled": compiled, "cuda_graph": graph, "step_attention": attention or "model",
               "fused_projections": fused,
               "new_tokens": n_new, "tokens_equal_to_generate": agree,
               "seconds": round(seconds, 2)}
    step = f"{'compiled' if compiled else 'eager'} step{' as a CUDA graph' if graph else ''}"
    if got.shape != ref.shape:
        return Finding("fail", f"the fast engine returned {tuple(got.shape)} tokens, generate() {tuple(ref.shape)}",
                       fix="generation.engine=hf, and report it with report.json", details=details)
    if agree < n_new:
        return Finding("warn", f"fast engine ({step}) and generate() agree on {agree} of {n_new} greedy tokens "
                       f"(bf16 rounding can part near-ties)", fix="generation.exact=true keeps eager's rounding; "
                       "generation.engine=hf if outputs must match generate() exactly", details=details)
    return Finding("pass", f"fast engine ({step}) gives generate()'s {n_new} greedy tokens ({seconds:.1f} s "
                   f"including {'compile' if compiled else 'the first call'})", details=details)


CHECKS = [
    ("smoke.load", load_check, "the model loads through gemma_run.loading.load on the first device"),
    ("smoke.generate", generate_check, "generation on each device, inputs on the model's device"),
    ("smoke.spread", spread_check, "device_map=auto spreads the model over all GPUs and matches one GPU"),
    ("smoke.fast_engine", fast_engine_check, "the fast generation engine gives generate()'s greedy tokens"),
    ("smoke.lora", lora_check, "one LoRA training step: finite loss, adapter changes, base does not"),
]
