"""quant=int4: torchao's int4 weight-only quantization (tinygemm kernels) as a transformers ``TorchAoConfig``.

The layout depends on where the weights go, so it is chosen when the model is loaded (``packing_format: auto``):
- CUDA: ``Int4WeightOnlyConfig(int4_packing_format="tile_packed_to_4d")`` -> ``Int4TilePackedTo4dTensor``,
  multiplied by ``aten._weight_int4pack_mm``. bf16 only; in_features padded to a multiple of 1024 and
  out_features to 8 (the padding is stored).
- CPU: torchao 0.18's ``Int4WeightOnlyConfig`` has no CPU layout (plain/preshuffled need the mslk package,
  plain_int32 and tile_packed_to_4d refuse the CPU). ``PrototypeInt4WeightOnlyConfig`` gives ``Int4OpaqueTensor``,
  multiplied by ``aten._weight_int4pack_mm_for_cpu``: fp32 or bf16, group size 32/64/128, no padding.
Both store 4 bits per weight and one (scale, zero) pair per group, in the model's dtype.

torchao quietly leaves a Linear unquantized when its in_features is not a multiple of the group size;
:func:`check_group_size` refuses that before loading instead, naming the module.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from gemma_run.app.errors import GemmaRunError
from gemma_run.quant.base import QuantBackend

log = logging.getLogger(__name__)

# Modules kept in the model's dtype when quant.skip_modules is empty: the output layer (its 262k-vocab read is
# better served bf16; tied to the embedding in Gemma) and the multimodal parts (not decode-bound).
DEFAULT_SKIP = ("lm_head", "vision_tower", "multi_modal_projector")
# quant.lm_head=int4 quantizes the output layer this many rows at a time on CUDA: torchao's quantization holds
# transients several times the padded rows' own size (a bf16 copy, int32 codes, ...), which for a whole
# 262k-vocabulary output would be many GB at once; a chunk of rows bounds them to a small fraction of that.
HEAD_CHUNK_ROWS = 16384
INSTALL = "pip install torchao==0.18.0 (or pip install 'gemma-run[fast]')"
TORCHAO_GROUP_SIZES = (32, 64, 128, 256)  # tinygemm's; the CPU layout takes 32, 64, 128
TORCHAO_PACKING = ("auto", "tile_packed_to_4d", "opaque")
TORCHAO_QPARAMS = ("tinygemm", "hqq")


def check_torchao() -> None:
    """torchao must import and know int4 packing formats (torchao >= 0.14); else say how to install it."""
    try:
        from torchao.quantization import Int4WeightOnlyConfig
    except Exception as e:  # ImportError, or a torch/torchao version mismatch at import
        raise GemmaRunError(f"quant=int4 needs torchao, which cannot be imported here: {type(e).__name__}: {e}",
                            key="quant", fix=f"{INSTALL}, or use quant=4bit (bitsandbytes) or quant=none") from e
    if "int4_packing_format" not in getattr(Int4WeightOnlyConfig, "__dataclass_fields__", {}):
        import torchao

        raise GemmaRunError(f"torchao {getattr(torchao, '__version__', '?')} is too old for quant=int4 "
                            "(Int4WeightOnlyConfig has no int4_packing_format)", key="quant", fix=INSTALL)


def packing(quant_cfg: Any, on_cuda: bool) -> str:
    """The layout for this run: quant.packing_format, with auto resolved by the device."""
    fmt = quant_cfg.packing_format
    if fmt == "auto":
        return "tile_packed_to_4d" if on_cuda else "opaque"
    if fmt == "tile_packed_to_4d" and not on_cuda:
        raise GemmaRunError("quant.packing_format=tile_packed_to_4d runs on CUDA only, and this model goes to the CPU",
                            key="quant.packing_format", fix="quant.packing_format=auto (opaque on CPU)")
    if fmt == "opaque" and on_cuda:
        raise GemmaRunError("quant.packing_format=opaque is torchao's CPU layout, and this model goes to a GPU",
                            key="quant.packing_format", fix="quant.packing_format=auto (tile_packed_to_4d on CUDA)")
    return fmt


def skip_modules(quant_cfg: Any) -> list[str]:
    """Modules left unquantized: quant.skip_modules when given (it replaces the default), else DEFAULT_SKIP."""
    return list(quant_cfg.skip_modules) or list(DEFAULT_SKIP)


def ao_config(quant_cfg: Any, on_cuda: bool):  # -> torchao AOBaseConfig
    """torchao's config object for the layout of this device."""
    check_torchao()
    from torchao.quantization.quantize_.workflows import Int4ChooseQParamsAlgorithm

    algo = Int4ChooseQParamsAlgorithm(quant_cfg.qparams_algorithm)
    fmt = packing(quant_cfg, on_cuda)
    if fmt == "opaque":
        if quant_cfg.group_size not in (32, 64, 128):
            raise GemmaRunError(f"quant.group_size={quant_cfg.group_size}: torchao's CPU int4 layout takes 32, 64 "
                                "or 128", key="quant.group_size", fix="quant.group_size=128")
        from torchao.prototype.quantization.int4 import PrototypeInt4WeightOnlyConfig

        return PrototypeInt4WeightOnlyConfig(group_size=quant_cfg.group_size, int4_choose_qparams_algorithm=algo,
                                             set_inductor_config=False)
    from torchao.quantization import Int4WeightOnlyConfig

    # set_inductor_config=False: torchao would change torch._inductor's global flags at quantization time;
    # the decode loop that compiles owns those settings.
    return Int4WeightOnlyConfig(group_size=quant_cfg.group_size, int4_packing_format=fmt,
                                int4_choose_qparams_algorithm=algo, set_inductor_config=False)


def build(quant_cfg: Any, on_cuda: bool | None, dtype: str):  # -> transformers.TorchAoConfig
    if on_cuda is None:
        import torch

        on_cuda = torch.cuda.is_available()
    if on_cuda and dtype != "bfloat16":
        raise GemmaRunError(f"quant=int4 on a GPU takes bf16 weights only (tinygemm), not {dtype}",
                            key="model.dtype", fix="model.dtype=bfloat16 (or auto)")
    config = ao_config(quant_cfg, on_cuda)
    from transformers import TorchAoConfig

    return TorchAoConfig(quant_type=config, modules_to_not_convert=skip_modules(quant_cfg))


def quantize_output_layer(model: Any, quant_cfg: Any, on_cuda: bool) -> None:
    """quant.lm_head=int4: the output layer becomes an int4 linear (the run's group size and layout), in place.

    transformers' torchao path leaves it in the model's dtype; a tied one is the input embedding's table, which
    stays as it is for the input lookup (one row a token) while the output reads the int4 copy. On CUDA the
    copy is held as the fast engine holds its stacked projections (``fused_projections``: tinygemm without
    torchao's in_features padding), so a decode step reads about a quarter of the output layer's bf16 bytes.
    """
    import torch
    from torchao.quantization import quantize_

    from gemma_run.infer.engine import fused_projections

    head = model.get_output_embeddings()
    if type(head) is not torch.nn.Linear:
        raise GemmaRunError(f"quant.lm_head=int4: the output layer of {type(model).__name__} is a "
                            f"{type(head).__name__}, not a plain Linear", key="quant.lm_head",
                            fix="quant.lm_head=keep")
    if head.in_features % quant_cfg.group_size:
        raise GemmaRunError(f"quant.lm_head=int4: quant.group_size={quant_cfg.group_size} does not divide the "
                            f"output layer's {head.in_features} inputs", key="quant.group_size",
                            fix="a group size dividing it, or quant.lm_head=keep")
    config = ao_config(quant_cfg, on_cuda)

    def rows(start: int, stop: int) -> Any:  # rows [start, stop) of the output as torchao's int4 linear
        part = torch.nn.Linear(head.in_features, stop - start, bias=head.bias is not None, device="meta")
        part.weight = torch.nn.Parameter(head.weight.detach()[start:stop], requires_grad=False)  # a view
        part.bias = None if head.bias is None else torch.nn.Parameter(head.bias.detach()[start:stop].clone())
        quantize_(part, config)
        return part

    out = head.out_features
    chunk = HEAD_CHUNK_ROWS if on_cuda and out % fused_projections.TILE_N == 0 else out
    with torch.no_grad():
        parts = [rows(start, min(start + chunk, out)) for start in range(0, out, chunk)]
        if fused_projections.stackable_int4(parts):
            copy = fused_projections.stack_int4(parts)
        elif len(parts) == 1:  # not tinygemm's layout (the CPU's), or rows it pads: torchao's own linear
            copy = parts[0]
        else:
            parts.clear()
            copy = rows(0, out)
    hook = getattr(head, "_hf_hook", None)
    if hook is not None:  # accelerate's device hooks (a model spread over devices) go with the module
        from accelerate.hooks import add_hook_to_module

        add_hook_to_module(copy, hook)
    model.set_output_embeddings(copy)
    log.info("quant.lm_head=int4: the output layer (%d x %d) quantized to int4", head.out_features, head.in_features)


def quantized_linears(model: Any, skip: list[str]) -> dict[str, Any]:
    """name -> nn.Linear that transformers' torchao quantizer converts (plain nn.Linear, not skipped)."""
    from torch import nn

    from gemma_run.loading.compat import should_convert_module

    skip = [*skip, *(getattr(model, "_keep_in_fp32_modules", None) or [])]
    return {name: m for name, m in model.named_modules()
            if type(m) is nn.Linear and should_convert_module(name, skip)}


def check_group_size(quant_cfg: Any, skeleton: Any) -> None:
    """Every Linear to quantize must split into whole groups (torchao would leave it bf16 without a word)."""
    size = quant_cfg.group_size
    bad = [(n, m.in_features) for n, m in quantized_linears(skeleton, skip_modules(quant_cfg)).items()
           if m.in_features % size]
    if bad:
        name, width = bad[0]
        fits = [g for g in (128, 64, 32) if all(w % g == 0 for _, w in bad)]
        raise GemmaRunError(
            f"quant.group_size={size} does not divide the in_features of {name} ({width}; {len(bad)} such "
            "Linear module(s)): torchao would leave them unquantized", key="quant.group_size",
            fix=(f"quant.group_size={fits[0]}" if fits else "a group size dividing every in_features")
            + f", or keep them unquantized with quant.skip_modules=[lm_head,{name.rsplit('.', 1)[-1]}]")


def torchao_problems(quant_cfg: Any) -> list[GemmaRunError]:
    """Config errors of quant=int4 found without importing anything (run by the Validate plugin)."""
    from gemma_run.app.errors import ConfigError

    problems: list[GemmaRunError] = []
    if quant_cfg.group_size not in TORCHAO_GROUP_SIZES:
        problems.append(ConfigError(f"quant.group_size={quant_cfg.group_size} is not one tinygemm supports",
                                    key="quant.group_size", fix="quant.group_size=128 (or 32, 64; 256 on CUDA)"))
    if quant_cfg.packing_format not in TORCHAO_PACKING:
        problems.append(ConfigError(f"quant.packing_format={quant_cfg.packing_format!r} is not supported",
                                    key="quant.packing_format", fix="quant.packing_format=auto"))
    if quant_cfg.lm_head not in ("keep", "int4"):
        problems.append(ConfigError(f"quant.lm_head={quant_cfg.lm_head!r} is neither keep nor int4",
                                    key="quant.lm_head", fix="quant.lm_head=keep (or int4)"))
    if quant_cfg.qparams_algorithm not in TORCHAO_QPARAMS:
        problems.append(ConfigError(f"quant.qparams_algorithm={quant_cfg.qparams_algorithm!r} is not supported",
                                    key="quant.qparams_algorithm", fix="quant.qparams_algorithm=tinygemm (or hqq)"))
    return problems


class TorchAoInt4(QuantBackend):
    """torchao int4 weight-only (tinygemm kernels): an inference format (no training, no ZeRO-3, no TP)."""

    name = "torchao"
    allowed_bits = (4,)

    @property
    def trains(self) -> bool:
        return False  # transformers does not train through torchao's int4 weights

    @property
    def zero3_sharding(self) -> bool:
        return False

    def problems(self) -> list:
        return self.basic_problems() or torchao_problems(self.cfg)

    def transformers_config(self, model_type: str = "", on_cuda: bool | None = None, dtype: str = "bfloat16"):
        return build(self.cfg, on_cuda, dtype)

    def check_model(self, skeleton: Callable[[], Any], on_cuda: bool) -> None:
        check_group_size(self.cfg, skeleton())

    def after_load(self, model: Any, on_cuda: bool) -> None:
        if self.cfg.lm_head == "int4":
            quantize_output_layer(model, self.cfg, on_cuda=on_cuda)

    def planner_quant(self, on_gpu: bool = True):
        from gemma_run.planning.memory import Quant

        q = self.cfg
        return Quant("int4", skip_modules=tuple(q.skip_modules), group_size=int(q.group_size), padded=on_gpu,
                     lm_head=str(q.lm_head) == "int4", backend=self.target())

    # int4 (tinygemm): 4 bits per weight + one (scale, zero) pair per group of ``group_size`` weights of one row, in
    # the model's dtype. On CUDA (tile_packed_to_4d) the weight is first padded: in_features to a multiple of 1024,
    # out_features to 8 (``Int4TilePackedTo4dTensor.from_hp``); the CPU layout (opaque) is not. The fast engine
    # stacks q/k/v and gate/up (``gemma_run.infer.engine.fused_projections``) and keeps their in_features padded only to
    # what tinygemm needs (128, or the group size if larger): ``Quant.stacked``. Quantized: every ``nn.Linear`` but
    # quant.skip_modules (default lm_head, vision tower, projector).
    planner_modes = {"int4": 4}

    @classmethod
    def planned_modules(cls, model: Any, q: Any) -> set[str]:
        return set(quantized_linears(model, list(q.skip_modules) or list(DEFAULT_SKIP)))

    @classmethod
    def planned_weight_bytes(cls, shape: tuple[int, ...], q: Any, dtype: str, module: str = "",
                             unpadded: bool = False) -> int:
        import math

        from gemma_run.infer.engine.fused_projections import GROUPS, TILE_N, TORCHAO_K_PAD
        from gemma_run.planning.memory import DTYPE_BYTES, rounded

        rows, cols = shape
        if q.padded:  # Int4TilePackedTo4dTensor pads before packing, and keeps the padding
            sibling = q.stacked and module.rsplit(".", 1)[-1] in {n for g in GROUPS for n in g}
            stacked = rows % TILE_N == 0 and (sibling or unpadded)
            multiple = math.lcm(128, q.group_size) if stacked else TORCHAO_K_PAD
            rows, cols = -(-rows // TILE_N) * TILE_N, -(-cols // multiple) * multiple
        groups = -(-cols // q.group_size)
        return rounded(rows * cols // 2) + rounded(groups * rows * 2 * DTYPE_BYTES[dtype])

