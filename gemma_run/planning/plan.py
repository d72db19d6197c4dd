"""Put the pieces together: one plan for one model, quant, device list and workload (infer or train)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from gemma_run.app.errors import GemmaRunError
from gemma_run.planning import devices, kv, memory, params, skeleton, training
from gemma_run.planning.memory import DTYPE_BYTES, Quant
from gemma_run.planning.training import TrainSpec

GiB = 2**30


@dataclass(frozen=True)
class PlanInputs:
    """Everything a plan depends on, as plain values (``inputs.from_cfg`` reads them from a run config)."""

    config: dict[str, Any]  # model.config (the published config.json)
    text_only: bool = True
    dtype: str = "bfloat16"  # of the weights not quantized and of the compute
    quant: Quant = field(default_factory=Quant)
    quant_cpu_offload: bool = False  # quant.cpu_offload: bitsandbytes allows modules on the CPU
    mode: str = "infer"  # infer | train
    prompt: int = 128  # infer: prompt tokens (prefill)
    new_tokens: int = 128  # infer: generated tokens
    batch: int = 1  # infer: sequences at once
    gpus: tuple[int, ...] = ()  # bytes each GPU can give
    strategy: str = "auto"  # device_map strategy
    single_device: str = "0"  # strategy=single: "0", "1", ... or "cpu"
    explicit_map: tuple[tuple[str, str], ...] = ()
    cpu_budget: int = 0  # bytes of CPU memory modules may be offloaded to
    # What each device really has, when a device_map.max_memory cap limits only where weights go (accelerate's
    # meaning of max_memory): the run fits if each device's total fits here. Empty/0: the budgets above.
    gpu_capacity: tuple[int, ...] = ()
    cpu_capacity: int = 0
    disk: bool = False  # an offload folder is set
    # the weights are random, made in memory unit by unit while they load (gemma_run.loading.random_memory)
    random_build: bool = False
    overhead_per_gpu: int = GiB  # CUDA context + allocator slack, not in any tensor
    # infer on the fast engine (gemma_run.infer.engine): its static cache holds this many positions in every layer,
    # sliding ones included; 0: transformers' cache (sliding layers capped at their window)
    static_cache_len: int = 0
    train: TrainSpec = field(default_factory=TrainSpec)

    @property
    def context(self) -> int:
        return self.train.seq_len if self.mode == "train" else self.prompt + self.new_tokens


def _dev(d: str) -> str:
    return f"cuda:{d}" if d.isdigit() else d


def make_plan(p: PlanInputs) -> dict[str, Any]:
    """The plan: params, bytes per device (with their parts), fits, and the problems found."""
    model = skeleton.build(p.config, p.text_only)
    units = params.units(model)
    shape = kv.shape_of(skeleton.text_config(model))
    backend = p.quant.stored_by  # the quant backend's answers: which modules, bytes per weight, transients
    quantized = memory.quantized_modules(model, p.quant)
    if backend.quantized and not quantized:
        raise GemmaRunError(f"quant={p.quant.mode}: this model has no Linear layer {backend.name} can quantize",
                            key="quant", fix="quant=none")
    db = DTYPE_BYTES[p.dtype]
    wbytes = {u.name: memory.unit_bytes(u, p.quant, quantized, p.dtype) for u in units}
    tied = model.get_output_embeddings() is not None and \
        model.get_output_embeddings().weight is model.get_input_embeddings().weight
    counts = params.by_component(units)
    unread = _quantized_output_layer(p, model, units, wbytes, tied) if p.quant.lm_head else 0
    # a lookup table: a decode step reads one row of the per-layer embeddings (Gemma 4 E2B/E4B), not the table
    unread += sum(memory.tensor_bytes(t, p.quant, quantized, p.dtype)
                  for t in params.per_layer_embedding_tensors(units))
    moe = params.moe_of(skeleton.text_config(model))
    result: dict[str, Any] = {
        "mode": p.mode, "dtype": p.dtype, "quant": p.quant.mode, "params": counts,
        "weights_bytes": sum(wbytes.values()), "tied_embeddings": tied,
        # weights a decode step does not read: the tied table when the output reads its int4 copy
        "decode_unread_bytes": unread,
        # mixture of experts: the experts' bytes, of which a decode step reads Moe.read_fraction(batch)
        "moe": {"experts": moe.experts, "top_k": moe.top_k} if moe else None,
        "expert_bytes": sum(memory.tensor_bytes(t, p.quant, quantized, p.dtype) for t in params.expert_tensors(units)),
        "active_params": params.active_params(units, moe),
        "quantized_modules": len(quantized) + (1 if p.quant.lm_head else 0),
        "weights_bytes_by_dtype": memory.dtype_table(units, model),
        "layer_types": {t: shape.layer_types.count(t) for t in sorted(set(shape.layer_types))},
        "sliding_window": shape.sliding_window,
        "kv_shared_layers": sum(1 for heads, _ in shape.layer_kv if heads == 0),  # reuse another layer's KV
        "random_build_bytes": _random_build_bytes(p, units, quantized) if p.random_build else 0,
    }
    if p.mode == "train":
        _train(p, model, units, shape, wbytes, db, result)
    else:
        _infer(p, units, shape, wbytes, db, quantized, model, result)
    result["fits"] = not result["problems"]
    return result


def _quantized_output_layer(p: PlanInputs, model: Any, units: list[params.Unit], wbytes: dict[str, int],
                       tied: bool) -> int:
    """quant.lm_head=int4 (gemma_run.quant.torchao.quantize_output_layer): the output layer's int4 bytes
    join its unit (tied: the embedding's, whose table stays; else they replace the lm_head's weight). Returns
    the bytes a decode step no longer reads (the tied table)."""
    head = model.get_output_embeddings()
    name = next(n for n, m in model.named_modules() if m is head)
    int4 = p.quant.stored_by.planned_weight_bytes(tuple(head.weight.shape), p.quant, p.dtype, name, unpadded=True)
    if tied:
        unit = next(u for u in units if u.component == "embeddings")
        table = next(t for t in unit.tensors if t.name.endswith(".weight"))
        wbytes[unit.name] += int4
        return memory.tensor_bytes(table, p.quant, set(), p.dtype)
    unit = next(u for u in units if any(t.module == name for t in u.tensors))
    weight = next(t for t in unit.tensors if t.module == name and t.name.endswith(".weight"))
    wbytes[unit.name] += int4 - memory.tensor_bytes(weight, p.quant, set(), p.dtype)
    return 0


def _random_build_bytes(p: PlanInputs, units: list[params.Unit], quantized: set[str]) -> int:
    """Bytes an in-memory random build holds beyond the loaded weights (gemma_run.loading.random_memory): it makes
    one unit at a time in the build dtype (fp32 up to random_weights.BIG parameters, else bf16) and the loader
    quantizes or casts its tensors one by one, so at most the largest unit's tensors that are quantized or cast
    wait beside the weights (a Gemma 3 27B decoder layer: 0.77 GiB in bf16). Those kept as made become the weights."""
    from gemma_run.loading.random_weights import BIG

    build = 4 if sum(u.params for u in units) <= BIG else 2
    cast = build != DTYPE_BYTES[p.dtype]
    return max((sum(t.numel * build for t in u.tensors if not t.is_buffer and (
        cast or (t.module in quantized and t.name.endswith(".weight")))) for u in units), default=0)


def _largest_quantized(model: Any, quantized: set[str]) -> int:
    return max((m.weight.numel() for n, m in model.named_modules() if n in quantized), default=0)


def _head_device(units: list[params.Unit], placement: dict[str, str], tied: bool) -> str:
    want = "embeddings" if tied else "lm_head"
    for u in (units if tied else reversed(units)):
        if u.component == want:
            return placement[u.name]
    return placement[units[-1].name]


def _infer(p: PlanInputs, units, shape, wbytes, db, quantized, model, result) -> None:
    batch, ctx = p.batch, p.context
    kv_unit = {u.name: (kv.kv_layer_bytes(shape, u.layer_index, ctx, batch, db, p.static_cache_len)
                        if u.layer_index is not None else 0) for u in units}
    prefill = batch * p.prompt
    transient = kv.layer_forward_bytes(shape, prefill, db) + kv.prefill_mask_bytes(shape, batch, p.prompt)
    transient += p.quant.stored_by.planned_prefill_bytes(p.quant, prefill, shape.hidden, shape.intermediate,
                                                         _largest_quantized(model, quantized), db)
    logits = kv.logits_generate_bytes(shape, batch, db)
    items = [devices.Item(u.name, wbytes[u.name] + kv_unit[u.name], u.layer_index is not None) for u in units]
    reserve = p.overhead_per_gpu + max(kv.WORKSPACE + transient, result["random_build_bytes"])
    placement = _placement(p, items, [max(g - reserve, 0) for g in p.gpus])
    head = _head_device(units, placement, result["tied_embeddings"])
    parts: dict[str, dict[str, int]] = {}
    for u in units:
        d = parts.setdefault(placement[u.name], {"weights": 0, "kv_cache": 0, "activations": 0, "overhead": 0})
        d["weights"] += wbytes[u.name]
        d["kv_cache"] += kv_unit[u.name]
    for dev, d in parts.items():
        if dev.isdigit():
            d["activations"] = transient + kv.WORKSPACE + (logits if dev == head else 0)
            d["overhead"] = p.overhead_per_gpu
        elif dev == "cpu" and dev == head:
            d["activations"] = transient + logits
    result.update(kv_cache_bytes=sum(kv_unit.values()), context=ctx, batch=batch, prompt=p.prompt,
                  new_tokens=p.new_tokens, placement=_ranges(units, placement),
                  device_map=_device_map(model, units, placement, head))
    _finish(p, parts, placement, result)


def _train(p: PlanInputs, model, units, shape, wbytes, db, result) -> None:
    t = p.train
    tokens = t.batch * t.seq_len
    lora = training.lora_params_by_unit(model, units, t) if t.lora else {u.name: u.params for u in units}
    trainable = sum(lora.values())
    state = training.state_bytes(trainable, t, db)
    saved_layer = tokens * shape.hidden * db if t.gradient_checkpointing else kv.layer_saved_bytes(shape, tokens, db)
    transient = kv.layer_forward_bytes(shape, tokens, db)
    if t.gradient_checkpointing:
        transient += kv.layer_saved_bytes(shape, tokens, db)  # the layer recomputed in backward
    logits = training.logits_bytes(shape, tokens, db, t)
    data_parallel = t.world > 1 or t.zero_stage > 0
    result.update(trainable_params=trainable, context=t.seq_len, batch=t.batch, world=t.world,
                  zero_stage=t.zero_stage, gradient_checkpointing=t.gradient_checkpointing, lora=t.lora,
                  training_state_bytes={"adapter": state.adapter, "gradients": state.gradients,
                                        "optimizer": state.optimizer, "cpu": state.cpu})
    saved = {u.name: saved_layer if u.layer_index is not None else 0 for u in units}
    if not data_parallel:
        per_param = state.gpu / trainable if trainable else 0
        items = [devices.Item(u.name, wbytes[u.name] + int(lora[u.name] * per_param) + saved[u.name],
                              u.layer_index is not None) for u in units]
        reserve = p.overhead_per_gpu + max(kv.WORKSPACE + transient, result["random_build_bytes"])
        placement = _placement(p, items, [max(g - reserve, 0) for g in p.gpus])
        head = _head_device(units, placement, result["tied_embeddings"])
        parts: dict[str, dict[str, int]] = {}
        for u in units:
            d = parts.setdefault(placement[u.name], {"weights": 0, "training_state": 0, "activations": 0,
                                                     "overhead": 0})
            d["weights"] += wbytes[u.name]
            d["training_state"] += int(lora[u.name] * per_param)
            d["activations"] += saved[u.name]
        for dev, d in parts.items():
            on_gpu = dev.isdigit()
            d["activations"] += transient + (kv.WORKSPACE if on_gpu else 0) + (logits if dev == head else 0)
            d["overhead"] = p.overhead_per_gpu if on_gpu else 0
        if state.cpu:
            parts.setdefault("cpu", {"training_state": 0})["training_state"] = state.cpu
        result["placement"] = _ranges(units, placement)
        result["device_map"] = _device_map(model, units, placement, head)
        _finish(p, parts, placement, result)
        return
    weights = sum(wbytes.values())
    w_gpu = weights // t.world if t.zero_stage >= 3 else weights
    cpu = state.cpu
    if t.offload_params and t.zero_stage >= 3:
        cpu += w_gpu
        w_gpu = 0
    gather = 2 * max(wbytes[u.name] for u in units) if t.zero_stage >= 3 else 0  # ZeRO-3 fetches whole layers
    buckets = 2 * shape.hidden * shape.hidden * 2 if t.zero_stage else 0  # HF "auto" reduce/prefetch buckets
    rank = {"weights": w_gpu, "training_state": state.gpu,
            "activations": sum(saved.values()) + transient + logits + kv.WORKSPACE + gather + buckets,
            "overhead": p.overhead_per_gpu}
    problems = []
    if p.gpus:
        local = min(t.world, len(p.gpus))
        parts = {str(i): dict(rank) for i in range(local)}
        if cpu:
            parts["cpu"] = {"training_state": cpu * local}
        if t.world > len(p.gpus):
            problems.append(f"{t.world} processes need {t.world} GPUs on this node, only {len(p.gpus)} are planned")
    else:  # no GPU: DeepSpeed's CPU accelerator (gloo); every rank of this node lives in host memory
        parts = {"cpu": {"weights": w_gpu * t.world, "training_state": (state.gpu + cpu) * t.world,
                         "activations": rank["activations"] * t.world, "overhead": 0}}
    result["placement"] = {"every rank": "a full replica" if t.zero_stage < 3 else f"1/{t.world} of each weight"}
    _finish(p, parts, {}, result, problems)


def _placement(p: PlanInputs, items, budgets) -> dict[str, str]:
    return devices.place(items, budgets, p.strategy if p.gpus or p.strategy == "explicit" else "cpu",
                         p.cpu_budget, p.disk, p.single_device, dict(p.explicit_map))


def _device_map(model: Any, units: list[params.Unit], placement: dict[str, str], head: str) -> dict[str, str]:
    """Module name -> device ("0", "1", ..., "cpu", "disk", "none"): the placement as a from_pretrained device
    map. A tied output layer owns no tensor of its own (no unit holds it) and goes with the embedding."""
    out = {u.name: placement[u.name] for u in units}
    head_name = next((n for n, m in model.named_modules() if m is model.get_output_embeddings()), None)
    if head_name and not any(head_name == n or head_name.startswith(n + ".") for n in out):
        out[head_name] = head
    return out


def _ranges(units, placement: dict[str, str]) -> dict[str, str]:
    """Device -> the units it holds, decoder layers shown as a range."""
    out: dict[str, list[str]] = {}
    for u in units:
        out.setdefault(_dev(placement[u.name]), []).append(u.name)
    shown = {}
    for dev, names in out.items():
        layers = [u.layer_index for u in units if u.name in names and u.layer_index is not None]
        rest = [n for n in names if not any(u.name == n and u.layer_index is not None for u in units)]
        text = [f"layers {min(layers)}-{max(layers)}"] if layers else []
        shown[dev] = ", ".join(text + [r.rpartition(".")[2] if "layers" not in r else r for r in rest])
    return shown


def _finish(p: PlanInputs, parts: dict[str, dict[str, int]], placement: dict[str, str], result: dict,
            problems: list[str] | None = None) -> None:
    problems = list(problems or [])
    per_device: dict[str, int] = {}
    detail: dict[str, dict[str, int]] = {}
    build = result.get("random_build_bytes", 0)
    for dev in sorted(parts, key=lambda d: (not d.isdigit(), int(d) if d.isdigit() else 0, d)):
        d = dict(parts[dev])
        # the build's transient comes and goes while the weights load, before the cache, activations or training
        # state of the run exist: the device's peak is the weights + overhead + the larger of the two
        runtime = sum(v for k, v in d.items() if k not in ("weights", "overhead"))
        if build > runtime and d.get("weights"):
            d["random_build"] = build - runtime
        d["total"] = sum(d.values())
        if dev.isdigit():
            gpus = p.gpu_capacity or p.gpus
            cap = gpus[int(dev)] if int(dev) < len(gpus) else 0
        elif dev == "cpu":
            cap = p.cpu_capacity or p.cpu_budget
        else:
            cap = None
        if cap is not None:
            d["capacity"] = cap
            if d["total"] > cap:
                problems.append(f"{_dev(dev)} needs {d['total'] / GiB:.2f} GiB, has {cap / GiB:.2f} GiB")
        if dev == "none":
            problems.append(f"{d['weights'] / GiB:.2f} GiB of weights fit on no device (no room on the GPUs, "
                            "the CPU budget, and no offload folder)")
        per_device[_dev(dev)] = d["total"]
        detail[_dev(dev)] = d
    mixed = {v for v in placement.values()}
    if p.quant.stored_by.quantized and any(v.isdigit() for v in mixed) and mixed & {"cpu", "disk"} \
            and not p.quant_cpu_offload:
        problems.append("bitsandbytes refuses a device map that puts quantized modules on GPUs and on the CPU/disk "
                        "(transformers raises 'Some modules are dispatched on the CPU or the disk')")
    offloaded = sum(detail.get(d, {}).get("weights", 0) for d in ("cpu", "disk"))
    if offloaded and any(v.isdigit() for v in mixed):
        result["offloaded_weights_bytes"] = offloaded
    result.update(bytes_per_device=per_device, devices=detail, problems=problems)


def with_changes(p: PlanInputs, **changes: Any) -> PlanInputs:
    """A copy of the inputs with some values changed (the suggestion's what-ifs); ``train_*`` go to TrainSpec."""
    train = {k.removeprefix("train_"): v for k, v in changes.items() if k.startswith("train_")}
    rest = {k: v for k, v in changes.items() if not k.startswith("train_")}
    if train:
        rest["train"] = replace(p.train, **train)
    return replace(p, **rest)
