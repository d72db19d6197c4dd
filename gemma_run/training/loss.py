"""Causal-LM cross-entropy from the final hidden states and the lm_head weight, without the full logits.

The reference path (``train.loss_kernel=none``) lets the model compute logits for every position (bf16, then
an fp32 upcast, the log-softmax kept for backward): over Gemma's 262k vocabulary that is ~12 bytes a logit,
8.6 GB at 4 x 2048 tokens. The kernels here compute the same loss chunk by chunk of tokens and produce the
gradient wrt the hidden states (and wrt the weight when it trains) in the forward, as Liger's fused linear
cross-entropy does, so only one chunk of logits exists at a time:

- ``chunked``: pure torch (runs anywhere, CPU included); exact to fp32 rounding against the reference.
- ``liger``: ``liger_kernel``'s Triton kernel (CUDA only).

Both follow transformers' ``ForCausalLMLoss``: labels shifted inside (``labels[..., 1:]`` against the hidden
state of the position before), -100 ignored, the mean over the labelled tokens, or the sum over
``num_items_in_batch`` (what the Trainer passes with gradient accumulation so the accumulated loss is the mean
over the whole batch), logits upcast to fp32, Gemma's ``final_logit_softcapping`` applied.
"""

from __future__ import annotations

from typing import Any

IGNORE = -100
# fp32 logits of one chunk: ~4 temporaries of this size exist at once (logits, softmax, its gradient, tanh)
CHUNK_BYTES = 256 * 2**20


def shift_labels(labels: Any, shifted: Any = None) -> Any:
    """Targets aligned with the hidden states: position t predicts label t+1; the last position predicts nothing.

    Packed rows (DataCollatorWithFlattening) put -100 on every sequence's first label, so no position is
    trained to predict the next sequence's first token. ``shifted``: a ``shift_labels`` the collator gave."""
    import torch

    if shifted is not None:
        return shifted
    return torch.nn.functional.pad(labels, (0, 1), value=IGNORE)[..., 1:]


def reference(hidden: Any, weight: Any, targets: Any, *, softcap: float | None = None,
              num_items_in_batch: Any = None) -> Any:
    """The model's own loss (logits of every token, then transformers' cross-entropy): what the kernels match."""
    import torch

    logits = hidden @ weight.t()
    if softcap is not None:
        logits = torch.tanh(logits / softcap) * softcap
    logits = logits.float().reshape(-1, weight.shape[0])
    targets = targets.reshape(-1).to(logits.device)
    if num_items_in_batch is None:
        return torch.nn.functional.cross_entropy(logits, targets, ignore_index=IGNORE)
    total = torch.nn.functional.cross_entropy(logits, targets, ignore_index=IGNORE, reduction="sum")
    return total / _on(num_items_in_batch, total.device)


def _on(value: Any, device: Any) -> Any:
    import torch

    return value.to(device) if torch.is_tensor(value) else value


def chunk_tokens(vocab: int, budget: int = CHUNK_BYTES) -> int:
    """Tokens per chunk so one chunk's fp32 logits take about ``budget`` bytes (256 for Gemma's 262k vocab)."""
    return max(1, budget // (4 * vocab))


def _function():  # -> type[torch.autograd.Function]
    import torch

    class ChunkedLinearCrossEntropy(torch.autograd.Function):
        """loss = CE(softcap(hidden @ weight.T)) computed chunk by chunk; gradients made in the forward."""

        @staticmethod
        def forward(ctx, hidden, weight, targets, softcap, divisor, chunk):
            n = hidden.shape[0]
            divisor = _on(divisor, hidden.device)
            divisor = divisor.float() if torch.is_tensor(divisor) else float(divisor)
            weight_grad = weight.requires_grad
            grad_hidden = torch.empty_like(hidden) if hidden.requires_grad else None
            grad_weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if weight_grad else None
            total = torch.zeros((), dtype=torch.float32, device=hidden.device)
            for start in range(0, n, chunk):
                h = hidden[start:start + chunk]
                t = targets[start:start + chunk]
                logits = (h @ weight.t()).float()
                if softcap is not None:
                    capped = torch.tanh(logits / softcap)
                    logits = capped * softcap
                valid = t != IGNORE
                safe = torch.where(valid, t, 0)
                lse = torch.logsumexp(logits, dim=-1)
                picked = logits.gather(1, safe[:, None]).squeeze(1)
                total += torch.where(valid, lse - picked, 0.0).sum()
                if grad_hidden is None and grad_weight is None:
                    continue
                # d loss / d logits = softmax - onehot(target), zero on ignored rows (before the division)
                grad = torch.softmax(logits, dim=-1)
                grad.scatter_add_(1, safe[:, None], torch.full_like(picked[:, None], -1.0))
                grad.mul_(valid[:, None] / divisor)
                if softcap is not None:
                    grad.mul_(1 - capped * capped)
                grad = grad.to(hidden.dtype)
                if grad_hidden is not None:
                    grad_hidden[start:start + chunk] = grad @ weight
                if grad_weight is not None:
                    grad_weight += (grad.t() @ h).float()
            loss = total / divisor
            if grad_weight is not None:
                grad_weight = grad_weight.to(weight.dtype)
            ctx.save_for_backward(grad_hidden, grad_weight)
            return loss

        @staticmethod
        def backward(ctx, grad_loss):
            grad_hidden, grad_weight = ctx.saved_tensors
            gh = grad_hidden * grad_loss.to(grad_hidden.dtype) if grad_hidden is not None else None
            gw = grad_weight * grad_loss.to(grad_weight.dtype) if grad_weight is not None else None
            return gh, gw, None, None, None, None

    return ChunkedLinearCrossEntropy


_FUNCTION: Any = None


def chunked(hidden: Any, weight: Any, targets: Any, *, softcap: float | None = None,
            num_items_in_batch: Any = None, chunk: int | None = None) -> Any:
    """The reference loss, chunk by chunk of tokens: never more than ``chunk`` tokens of logits at once."""
    global _FUNCTION
    if _FUNCTION is None:
        _FUNCTION = _function()
    hidden = hidden.reshape(-1, hidden.shape[-1])
    targets = targets.reshape(-1).to(hidden.device)
    divisor = num_items_in_batch if num_items_in_batch is not None else (targets != IGNORE).sum()
    return _FUNCTION.apply(hidden, weight, targets, softcap, divisor, chunk or chunk_tokens(weight.shape[0]))


def liger(hidden: Any, weight: Any, targets: Any, *, softcap: float | None = None,
          num_items_in_batch: Any = None) -> Any:
    """Liger's fused linear cross-entropy (Triton, CUDA), reduced as transformers reduces."""
    from liger_kernel.transformers.functional import liger_fused_linear_cross_entropy

    hidden = hidden.reshape(-1, hidden.shape[-1])
    targets = targets.reshape(-1).to(hidden.device)
    reduction = "mean" if num_items_in_batch is None else "sum"
    loss = liger_fused_linear_cross_entropy(hidden, weight, targets, ignore_index=IGNORE, reduction=reduction,
                                            softcap=softcap)
    return loss if num_items_in_batch is None else loss / _on(num_items_in_batch, loss.device)


KERNELS = {"chunked": chunked, "liger": liger}


def liger_unavailable(module: str = "liger_kernel.transformers.functional") -> str | None:
    """Why Liger's kernels cannot run here (None: they can): they need CUDA, Triton and liger_kernel's ``module``
    importing (the functional API for the loss; gemma_run.training.fused_ops asks for its monkey_patch)."""
    import importlib

    import torch

    if not torch.cuda.is_available():
        return "no CUDA device (Liger's kernels are Triton)"
    try:
        importlib.import_module(module)
    except ImportError as e:
        return f"liger_kernel does not import: {e} (pip install 'gemma-run[fast]')"
    return None


def liger_available() -> bool:
    return liger_unavailable() is None


def choose(name: str) -> str:
    """The kernel ``train.loss_kernel`` means here: auto -> liger on CUDA when it imports, else chunked."""
    import logging

    if name != "auto":
        return name
    why = liger_unavailable()
    if why:
        logging.getLogger(__name__).info("train.loss_kernel=auto: chunked, not liger (%s)", why)
        return "chunked"
    return "liger"
