"""gemma-run: run, plan, test and fine-tune Gemma (and any Hugging Face causal LM) from one composed config."""

from gemma_run.app.api import compose, run

__version__ = "0.1.0"
__all__ = ["__version__", "compose", "run"]
