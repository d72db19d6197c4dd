"""quant=8bit|4bit|fp4: bitsandbytes (LLM.int8(), NF4/FP4) as a :class:`~gemma_run.quant.base.QuantBackend`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from gemma_run.app.errors import GemmaRunError
from gemma_run.quant.base import QuantBackend


def torch_dtype(name: str):  # -> torch.dtype
    import torch

    try:
        return {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32,
                "uint8": torch.uint8}[name]
    except KeyError:
        raise GemmaRunError(f"unknown dtype {name!r}", key="quant", fix="bfloat16, float16, float32 or uint8") \
            from None


BLOCK = 64  # bitsandbytes' 4-bit block size on CUDA (and CPU)
NESTED_BLOCK = 256  # double quant: blocks of absmax values per fp32 scale
MIN_CPU_BNB = (0, 45)  # the first bitsandbytes release with a CPU backend for 8-bit and 4-bit


def _version(text: str) -> tuple[int, int]:
    major, minor = ([*(int(p) if p.isdigit() else 0 for p in text.split(".")[:2]), 0, 0])[:2]
    return major, minor


def check_bitsandbytes(quant_cfg: Any | None = None, model_type: str = "") -> None:
    """bitsandbytes must import and have a backend for this machine, else say why and what to use."""
    name = getattr(quant_cfg, "name", "8bit/4bit")
    try:
        import bitsandbytes
    except Exception as e:  # ImportError, or its own RuntimeError when no backend fits
        raise GemmaRunError(
            f"quant={name} needs bitsandbytes, which cannot run here: {type(e).__name__}: {e}",
            key="quant",
            fix="pip install 'bitsandbytes>=0.45' (CPU and CUDA builds are on PyPI), or run with quant=none",
        ) from e
    import torch

    version = str(getattr(bitsandbytes, "__version__", "0.0"))
    if not torch.cuda.is_available() and _version(version) < MIN_CPU_BNB:
        raise GemmaRunError(
            f"quant={name}: bitsandbytes {version} has no CPU backend and this machine has no CUDA GPU",
            key="quant", fix="pip install -U 'bitsandbytes>=0.45', run on a CUDA GPU, or use quant=none")
    if quant_cfg is not None and quant_cfg.bits == 4 and quant_cfg.compute_dtype == "float16" \
            and model_type.startswith("gemma3"):
        raise GemmaRunError("quant.compute_dtype=float16 overflows Gemma 3's activations (fp16 max 65504)",
                            key="quant.compute_dtype", fix="quant.compute_dtype=bfloat16 (or float32)")


def build(quant_cfg: Any, model_type: str = ""):
    """The quant group -> transformers' BitsAndBytesConfig."""
    from gemma_run.patches import registry

    check_bitsandbytes(quant_cfg, model_type)
    registry.apply_one("bitsandbytes.repeated_warnings", quant_backend="bitsandbytes")  # once per run, not per token
    from transformers import BitsAndBytesConfig

    skip = list(quant_cfg.skip_modules) or None
    if quant_cfg.bits == 8:
        return BitsAndBytesConfig(load_in_8bit=True, llm_int8_threshold=quant_cfg.int8_threshold,
                                  llm_int8_skip_modules=skip,
                                  llm_int8_enable_fp32_cpu_offload=quant_cfg.cpu_offload)
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=quant_cfg.quant_type.value,
        bnb_4bit_use_double_quant=quant_cfg.double_quant,
        bnb_4bit_compute_dtype=torch_dtype(quant_cfg.compute_dtype),
        bnb_4bit_quant_storage=torch_dtype(quant_cfg.quant_storage),
        llm_int8_skip_modules=skip,
        llm_int8_enable_fp32_cpu_offload=quant_cfg.cpu_offload,
    )


def cpu_flags() -> set[str]:
    """The CPU's feature flags (Linux /proc/cpuinfo); empty where that file does not exist."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def check_cpu_4bit(quant_cfg: Any, skeleton: Any, flags: set[str] | None = None) -> None:
    """bitsandbytes' CPU 4-bit kernels on AVX512-BF16 CPUs need every quantized Linear's output size to be a
    multiple of 32; otherwise generation dies in the kernel with ``AssertionError: N must be divisible by
    block_n`` (measured with bitsandbytes 0.50). Say so before loading, naming every such module in the fix."""
    import torch

    from gemma_run.loading.compat import should_convert_module

    if quant_cfg.bits != 4:
        return
    if "avx512_bf16" not in (cpu_flags() if flags is None else flags):
        return
    skip = list(quant_cfg.skip_modules) or ["lm_head"]
    linears = {name: m.out_features for name, m in skeleton.named_modules()
               if isinstance(m, torch.nn.Linear) and should_convert_module(name, skip)}
    bad = [name for name, size in linears.items() if size % 32]
    if bad:
        kinds = skip_names(bad, list(linears))
        keep = ",".join(dict.fromkeys([*skip, *kinds]))
        raise GemmaRunError(
            f"bitsandbytes' 4-bit CPU kernels on this CPU (AVX512-BF16) need every quantized Linear's output size "
            f"to be a multiple of 32; {bad[0]} has {linears[bad[0]]} ({len(bad)} such module(s): {', '.join(kinds)})",
            key="quant", fix="quant=8bit or quant=none on this CPU, run on a GPU, or keep those modules unquantized "
                             f"with 'quant.skip_modules=[{keep}]'")


def skip_names(bad: list[str], linears: list[str]) -> list[str]:
    """For the modules ``bad`` (of the Linears ``linears``), the shortest ends of their dotted names that end no
    other Linear's name, as ``quant.skip_modules`` entries (transformers skips a module whose name ends with one):
    ``q_proj`` where every layer's q_proj is bad, ``router.proj`` where ``proj`` would also end q_proj's name and
    leave every projection unquantized."""
    out, bad_set = [], set(bad)
    others = [n for n in linears if n not in bad_set]
    for name in bad:
        parts = name.split(".")
        tail = name
        for k in range(1, len(parts) + 1):
            tail = ".".join(parts[-k:])
            if not any(n.endswith(tail) for n in others):
                break
        out.append(tail)
    return list(dict.fromkeys(out))


class BitsAndBytes(QuantBackend):
    """bitsandbytes 8-bit (LLM.int8()) or 4-bit (NF4/FP4, QLoRA's format), by quant.bits."""

    name = "bitsandbytes"
    allowed_bits = (8, 4)

    @property
    def zero3_sharding(self) -> bool:
        return self.cfg.bits == 4  # 4-bit weights are stored in quant_storage, which ZeRO-3 can shard; int8 not

    def problems(self) -> list:
        from gemma_run.app.errors import ConfigError

        q = self.cfg
        infer_as = getattr(q.get("infer_as"), "value", q.get("infer_as")) or "keep"
        if infer_as != "keep" and (q.bits != 4 or q.quant_type.value != "nf4"):
            return [ConfigError(f"quant.infer_as={infer_as} chooses what quant=4bit's NF4 weights load as in "
                                f"inference; quant={q.name} has none", key="quant.infer_as",
                                fix="quant.infer_as=keep, or quant=4bit (quant=int4 loads int4 directly)")]
        return super().problems()

    def transformers_config(self, model_type: str = "", on_cuda: bool | None = None, dtype: str = "bfloat16"):
        return build(self.cfg, model_type)

    def check_model(self, skeleton: Callable[[], Any], on_cuda: bool) -> None:
        if self.cfg.bits == 4 and not on_cuda:
            # the skeleton is built on every CPU (the check itself applies to AVX512-BF16 ones), so the same code
            # runs whichever CPU the tests run on
            check_cpu_4bit(self.cfg, skeleton())

    def planner_quant(self, on_gpu: bool = True):
        from gemma_run.planning.memory import Quant

        q = self.cfg
        mode = "int8" if int(q.bits) == 8 else q.quant_type.value
        return Quant(mode, bool(q.double_quant), tuple(q.skip_modules), backend=self.target())

    # What bitsandbytes 0.45-0.50 keeps for one quantized Linear weight of n = out x in elements (as read from a
    # quantized model's ``Int8Params.SCB`` and ``Params4bit.quant_state``):
    # - 8-bit (LLM.int8): the int8 weight (n bytes) + ``SCB``, one fp32 scale per output row (4 x out bytes).
    # - 4-bit (nf4/fp4): the packed weight (n/2 bytes, whatever ``quant_storage`` dtype holds it) + one absmax per
    #   block of 64 weights: fp32 (4 bytes) without double quant; with double quant a uint8 per block + one fp32
    #   per 256 blocks + a 256-entry fp32 code and an fp32 offset. Plus the 16-entry fp32 nf4/fp4 code.
    # Which modules it quantizes is transformers' decision, reproduced by calling its own functions: every
    # ``nn.Linear`` (and GPT-2's ``Conv1D``) except ``get_keys_to_not_convert`` (the lm_head, tied weights, the last
    # module) when no skip list is given, else exactly the skip list, plus ``_keep_in_fp32_modules``. Embeddings,
    # norms, convolutions and biases keep the model's dtype.
    planner_modes = {"int8": 8, "nf4": 4, "fp4": 4}

    @classmethod
    def planned_modules(cls, model: Any, q: Any) -> set[str]:
        from torch import nn
        from transformers.pytorch_utils import Conv1D

        # transformers 4.x and 5.x keep these in different modules (gemma_run.loading.compat)
        from gemma_run.loading.compat import keys_to_not_convert, should_convert_module

        skip = list(q.skip_modules) if q.skip_modules else list(keys_to_not_convert(model))
        skip += list(getattr(model, "_keep_in_fp32_modules", None) or [])
        return {name for name, module in model.named_modules()
                if (type(module) is nn.Linear or isinstance(module, Conv1D)) and should_convert_module(name, skip)}

    @classmethod
    def planned_weight_bytes(cls, shape: tuple[int, ...], q: Any, dtype: str, module: str = "",
                             unpadded: bool = False) -> int:
        import math

        from gemma_run.planning.memory import rounded

        numel, rows = math.prod(shape), (shape[0] if shape else 1)
        if q.mode == "int8":
            return rounded(numel) + rounded(rows * 4)  # CB (int8) + SCB (fp32 per row)
        packed = rounded((numel + 1) // 2)
        blocks = -(-numel // BLOCK)
        code = rounded(16 * 4)
        if not q.double_quant:
            return packed + rounded(blocks * 4) + code
        nested = -(-blocks // NESTED_BLOCK)
        return packed + rounded(blocks) + rounded(nested * 4) + rounded(256 * 4) + rounded(4) + code

    @classmethod
    def planned_prefill_bytes(cls, q: Any, tokens: int, hidden: int, intermediate: int, largest_weight: int,
                              dtype_bytes: int) -> int:
        if q.mode == "int8":  # int8 activations and their outlier columns
            return tokens * 8 * max(intermediate, hidden)
        # 4-bit: a multi-token input multiplies by a whole dequantized weight (one token uses the gemv kernel)
        return largest_weight * dtype_bytes if tokens > 1 else 0

    def zero3_overrides(self, dtype: str) -> dict[str, Any]:
        if self.cfg.bits == 4 and self.cfg.quant_storage != dtype:
            return {"quant_storage": dtype}  # ZeRO shards tensors of the training dtype
        return {}
