"""Model FLOPs of a training step and the GPU's peak, for MFU (model FLOPs utilisation) in task=bench_train.

Per token, with N the weights that multiply activations (every Linear, the lm_head included; the input
embedding is a lookup and does no FLOPs):
- forward: 2N; backward wrt activations: 2N; backward wrt weights: 2N, only for weights that train.
  Full fine-tuning: 6N. LoRA/QLoRA: the base weights are frozen, so 4N, plus 6 x the adapters' parameters.
  A mixture of experts (Gemma 4 26B-A4B) adds the experts a token is routed to: top_k / experts of their weights.
- attention scores and their weighted sum: 4 x heads x head_dim x (mean context a query sees) per layer
  forward, x3 with its backward; the mean context is (S+1)/2 for a causal layer of S tokens and
  min(position+1, window) averaged for a sliding one.
Recomputation under gradient checkpointing is not counted (it is work the method adds, not model FLOPs), as in
PaLM's MFU. The peak is the dense bf16 tensor-core figure of the vendor's datasheet; null off CUDA or in fp32.
:func:`mfu_6n` is the simpler convention the training targets use: 6 x the matmul weights x tokens/s over the
bf16 matmul rate measured in the same run.
"""

from __future__ import annotations

from typing import Any

# Dense (no sparsity) bf16 tensor-core TFLOP/s with fp32 accumulation, from the datasheets. The first entry whose
# text is in torch.cuda.get_device_name() wins, so the more specific names come first.
PEAK_BF16_TFLOPS: tuple[tuple[str, float], ...] = (
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.0),
    ("H100", 989.0),  # SXM ("NVIDIA H100 80GB HBM3")
    ("H200", 989.0),
    ("A100", 312.0),
    ("L40S", 362.0),
    ("RTX 4090", 165.0),
    ("RTX 3090", 71.0),
)


def peak_tflops(device_name: str | None, dtype: str) -> float | None:
    if not device_name or dtype not in ("bfloat16", "float16"):
        return None
    return next((tflops for key, tflops in PEAK_BF16_TFLOPS if key in device_name), None)


def mfu_6n(matmul_params: int, tokens_per_second: float, matmul_tflops: float | None) -> float | None:
    """Every matmul weight counted as trained (6 FLOPs a weight a token; attention left out, LoRA's frozen weights
    counted as if they trained), over a matmul rate measured in the same run (gemma_run.bench.matmul_rate): the
    convention of gemma-run's training targets, comparable across LoRA, QLoRA and full fine-tuning. None without
    a rate."""
    if not matmul_tflops:
        return None
    return 6 * matmul_params * tokens_per_second / (matmul_tflops * 1e12)


def _mean_context(seq: int, window: int | None) -> float:
    if not window or window >= seq:
        return (seq + 1) / 2
    return (window * (window + 1) / 2 + (seq - window) * window) / seq  # min(p + 1, W) averaged over p


def per_token(model_config: dict[str, Any], text_only: bool, seq: int, *, lora: bool, lora_params: int) -> dict:
    """FLOPs per trained token and their parts (see the module docstring)."""
    from torch import nn
    from transformers.pytorch_utils import Conv1D

    from gemma_run.planning import kv, params, skeleton

    model = skeleton.build(model_config, text_only)
    linear = sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Linear | Conv1D))
    moe = params.moe_of(skeleton.text_config(model))
    if moe is not None:  # the experts' 3-D weights are no Linear: a token multiplies by its top_k of them
        linear += sum(t.numel for t in params.expert_tensors(params.units(model))) * moe.top_k // moe.experts
    shape = kv.shape_of(skeleton.text_config(model))
    attn_fwd = sum(4 * shape.heads * shape.kv_of(i)[1] * _mean_context(  # the layer's own head_dim (Gemma 4)
        seq, shape.sliding_window if t == "sliding_attention" else None) for i, t in enumerate(shape.layer_types))
    dense = (4 if lora else 6) * linear
    adapters = 6 * lora_params if lora else 0
    return {"flops_per_token": int(dense + adapters + 3 * attn_fwd), "matmul_params": linear,
            "attention_flops_per_token": int(3 * attn_fwd)}
