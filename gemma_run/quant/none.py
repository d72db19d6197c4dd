"""quant=none: weights in the model's dtype."""

from __future__ import annotations

from gemma_run.quant.base import QuantBackend


class NoQuant(QuantBackend):
    name = "none"
    allowed_bits = (16,)
    quantized = False
    planner_modes = {"none": 16}

    def transformers_config(self, model_type: str = "", on_cuda: bool | None = None, dtype: str = "bfloat16"):
        return None

    def planner_quant(self, on_gpu: bool = True):
        from gemma_run.planning.memory import Quant

        return Quant(backend=self.target())
