"""Training state: trainable parameters (LoRA or all), their gradients and AdamW states, where they live.

Bytes per trainable parameter, as the libraries keep them:
- LoRA with the HF Trainer: peft keeps adapters in fp32 (``autocast_adapter_dtype``): weight 4 + gradient 4
  + AdamW's two moments 8 = 16.
- Full fine-tuning with the HF Trainer on a bf16 model: gradient 2 + AdamW moments in the parameter's dtype
  2 x 2 (the weight itself is already counted with the model).
- LoRA on a mixture of experts' 3-D expert tensors (peft's ``target_parameters``, its ParamWrapper): one
  adapter pair per expert, r x experts x (in + out) parameters a tensor, the same 16 bytes each.
- DeepSpeed (bf16 mixed precision): bf16 weight 2 + bf16 gradient 2 + fp32 master weight, m and v 12.
  ZeRO-1 partitions the 12 over the N ranks, ZeRO-2 also the gradients, ZeRO-3 also the weights (frozen
  ones included); ``offload_optimizer`` moves the 12 to CPU memory, ``offload_params`` (ZeRO-3) the weights.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from gemma_run.planning.params import Unit


@dataclass(frozen=True)
class TrainSpec:
    lora: bool = True
    lora_r: int = 16
    target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    # peft target_parameters: parameter names (e.g. "experts.gate_up_proj") given LoRA as a whole tensor
    target_parameters: tuple[str, ...] = ()
    zero_stage: int = 0  # 0: no DeepSpeed
    offload_optimizer: bool = False
    offload_params: bool = False
    world: int = 1  # processes (GPUs) in data parallel
    gradient_checkpointing: bool = True
    seq_len: int = 2048
    batch: int = 1  # per device
    loss_kernel: str = "none"  # none: the model's full logits; chunked | liger | auto: a chunk at a time


def _targets_module(name: str, targets: tuple[str, ...], lm_head: str | None) -> bool:
    if "all-linear" in targets:
        return name != lm_head
    last = name.rpartition(".")[2]
    return any(last == t or name.endswith("." + t) for t in targets)


def lora_params_by_unit(model: Any, unit_list: list[Unit], spec: TrainSpec) -> dict[str, int]:
    """LoRA parameters (A: r x in, B: out x r) of every targeted Linear, keyed by the unit holding it."""
    from torch import nn
    from transformers.pytorch_utils import Conv1D

    out_emb = model.get_output_embeddings()
    lm_head = next((n for n, m in model.named_modules() if m is out_emb), None) if out_emb is not None else None
    counts = {u.name: 0 for u in unit_list}
    names = sorted(counts, key=len, reverse=True)
    for name, module in model.named_modules():
        if not isinstance(module, nn.Linear | Conv1D) or not _targets_module(name, spec.target_modules, lm_head):
            continue
        if isinstance(module, Conv1D):
            d_in, d_out = module.weight.shape
        else:
            d_in, d_out = module.in_features, module.out_features
        owner = next((u for u in names if name == u or name.startswith(u + ".") or u == ""), None)
        if owner is not None:
            counts[owner] += spec.lora_r * (d_in + d_out)
    for name, param in model.named_parameters():
        if not any(name == t or name.endswith("." + t) for t in spec.target_parameters):
            continue
        experts, d_a, d_b = (1, *param.shape) if param.dim() == 2 else tuple(param.shape)
        owner = next((u for u in names if name.startswith(u + ".") or u == ""), None)
        if owner is not None:
            counts[owner] += spec.lora_r * experts * (d_a + d_b)
    return counts


@dataclass
class StateBytes:
    """Bytes of the trainable state of ``params`` parameters on one rank's GPU and in CPU memory."""

    adapter: int = 0  # LoRA weights (full FT: already in the model's weights)
    gradients: int = 0
    optimizer: int = 0  # AdamW moments (+ fp32 master weights under DeepSpeed)
    cpu: int = 0

    @property
    def gpu(self) -> int:
        return self.adapter + self.gradients + self.optimizer


def state_bytes(trainable: int, spec: TrainSpec, dtype_bytes: int) -> StateBytes:
    """Trainable state on one rank for ``trainable`` parameters (see the module docstring)."""
    n = max(spec.world, 1)
    if spec.zero_stage == 0:
        if spec.lora:
            return StateBytes(adapter=4 * trainable, gradients=4 * trainable, optimizer=8 * trainable)
        return StateBytes(gradients=dtype_bytes * trainable, optimizer=2 * dtype_bytes * trainable)
    adapter = 2 * trainable if spec.lora else 0
    if spec.lora and spec.zero_stage >= 3:
        adapter //= n
    grads = 2 * trainable // (n if spec.zero_stage >= 2 else 1)
    optim = 12 * trainable // n
    out = StateBytes(adapter=adapter, gradients=grads, optimizer=optim)
    if spec.offload_optimizer:
        out.cpu += optim
        out.optimizer = 0
    return out


# One chunk of the chunked/fused loss: fp32 logits of 256 tokens of a 262k vocabulary, with its softmax, gradient
# and softcap temporaries (gemma_run/training/loss.py CHUNK_BYTES x 4); Liger's chunks are of the same order.
FUSED_CHUNK_BYTES = 4 * 256 * 2**20


def logits_bytes(shape: Any, tokens: int, dtype_bytes: int, spec: TrainSpec) -> int:
    """Loss memory: the full logits (planning.kv.logits_train_bytes) with loss_kernel=none; with a chunked or
    fused kernel one chunk of logits plus the gradient wrt the hidden states it makes in the forward."""
    from gemma_run.planning import kv

    if spec.loss_kernel == "none":
        return kv.logits_train_bytes(shape, tokens, dtype_bytes)
    return FUSED_CHUNK_BYTES + tokens * shape.hidden * (dtype_bytes + 4)
