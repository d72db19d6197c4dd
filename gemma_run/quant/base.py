"""The interface every quantization backend implements (modelled on transformers' ``HfQuantizer``).

A backend is built from the composed ``quant`` group (:func:`gemma_run.quant.from_cfg`) and answers for it:
config problems (no heavy imports), transformers' ``quantization_config``, checks before loading and work after
it, the planner's storage mode, and what the weights allow (training, ZeRO-3 sharding, tensor parallelism).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any, ClassVar


class QuantBackend(ABC):
    """One quantization backend; ``cfg`` is the run's ``quant`` group (its own schema's keys)."""

    name: ClassVar[str]  # the value of quant.backend this class implements
    allowed_bits: ClassVar[tuple[int, ...]]  # quant.bits values it takes; the first is the fix offered
    quantized: ClassVar[bool] = True  # False only for quant=none (weights in the model's dtype)

    def __init__(self, cfg: Any) -> None:
        self.cfg = cfg

    # --- what the weights allow -------------------------------------------------------------------------------
    @property
    def trains(self) -> bool:
        """Whether LoRA can train on top of these weights (full fine-tuning needs ``quantized`` False)."""
        return True

    @property
    def zero3_sharding(self) -> bool:
        """Whether DeepSpeed ZeRO-3 can shard these weights."""
        return True

    @property
    def tensor_parallel(self) -> bool:
        """Whether device_map=tp can shard these weights over GPUs."""
        return not self.quantized

    # --- config -----------------------------------------------------------------------------------------------
    def problems(self) -> list:
        """Config errors found without importing anything heavy (run by the Validate plugin)."""
        from gemma_run.app.errors import ConfigError

        q = self.cfg
        basic = self.basic_problems()
        if basic:
            return basic
        if q.get("lm_head", "keep") != "keep":
            return [ConfigError(f"quant.lm_head={q.lm_head} is quant=int4's option (torchao); quant={q.name} keeps "
                                "the output layer in the model's dtype", key="quant.lm_head",
                                fix="quant=int4 quant.lm_head=int4, or quant.lm_head=keep")]
        return []

    def basic_problems(self) -> list:
        """quant.backend and quant.bits against this class."""
        from gemma_run.app.errors import ConfigError

        q = self.cfg
        backend = getattr(q.get("backend"), "name", q.get("backend"))
        if backend is not None and backend != self.name:
            return [ConfigError(f"quant.backend={backend} does not match quant={q.name}'s backend ({self.name})",
                                key="quant.backend", fix=f"quant.backend={self.name}, or pick another quant option")]
        if q.bits not in self.allowed_bits:
            return [ConfigError(f"quant.bits={q.bits} does not exist for quant.backend={self.name}",
                                key="quant.bits",
                                fix=f"quant.bits={self.allowed_bits[0]} (or pick quant=none|8bit|4bit|fp4|int4)")]
        return []

    # --- loading ----------------------------------------------------------------------------------------------
    @abstractmethod
    def transformers_config(self, model_type: str = "", on_cuda: bool | None = None, dtype: str = "bfloat16"):
        """transformers' ``quantization_config`` for ``from_pretrained`` (None: load unquantized).

        ``on_cuda``: whether the weights go to a GPU (default: a GPU exists); ``dtype``: the model's dtype.
        """

    def check_model(self, skeleton: Callable[[], Any], on_cuda: bool) -> None:  # noqa: B027 (optional hook)
        """Refuse, before loading, a model this backend would quantize wrongly; ``skeleton()`` builds it on meta."""

    def after_load(self, model: Any, on_cuda: bool) -> None:  # noqa: B027 (optional hook)
        """Work on the loaded model (in place)."""

    # --- planning and training --------------------------------------------------------------------------------
    # The planner's storage modes this backend stores (gemma_run.planning.memory.Quant.mode) -> bits per weight.
    planner_modes: ClassVar[dict[str, int]] = {}

    @classmethod
    def target(cls) -> str:
        """The class's ``_target_``."""
        return f"{cls.__module__}.{cls.__qualname__}"

    @abstractmethod
    def planner_quant(self, on_gpu: bool = True):  # -> gemma_run.planning.memory.Quant
        """The planner's storage mode for these weights; the planner then asks this class (below) for the rest."""

    # The planner's questions, answered from its value ``q`` (a gemma_run.planning.memory.Quant of one of
    # planner_modes) and a model skeleton on the meta device: no weights, nothing heavy beyond torch/transformers.
    @classmethod
    def planned_modules(cls, model: Any, q: Any) -> set[str]:
        """Names of the modules whose weights this backend stores quantized."""
        return set()

    @classmethod
    def planned_weight_bytes(cls, shape: tuple[int, ...], q: Any, dtype: str, module: str = "",
                             unpadded: bool = False) -> int:
        """Bytes held on the device for one quantized weight of ``shape`` (out, in) of ``module``, allocator
        rounding included; ``dtype`` is the model's. ``unpadded``: held as the fast engine holds the output layer."""
        raise NotImplementedError(f"{cls.__name__} stores no quantized weight (planner mode {q.mode})")

    @classmethod
    def planned_prefill_bytes(cls, q: Any, tokens: int, hidden: int, intermediate: int, largest_weight: int,
                              dtype_bytes: int) -> int:
        """Transient bytes a forward over ``tokens`` tokens needs for these weights beyond what unquantized ones
        need (a dequantized copy, int8 activations); ``largest_weight``: elements of the largest quantized one."""
        return 0

    def zero3_overrides(self, dtype: str) -> dict[str, Any]:
        """quant keys to change for training with ZeRO-3 in ``dtype`` (e.g. the storage dtype ZeRO shards)."""
        return {}
