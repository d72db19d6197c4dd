"""Keys whose values are what a user types rather than config: free text, and paths on this machine.

Free-text keys take any text verbatim from the command line (gemma_run/app/free_text.py); every other key keeps
Hydra's override grammar. Path keys holding a relative path are read relative to the directory gemma-run was
started in, also when ``hydra.job.chdir=true`` runs the job in its run dir (gemma_run/app/start_dir.py).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class FreeText:
    """How a free-text key reads its value from the command line."""

    # a list of strings: a value written as `[a,b]` is Hydra's list; any other text is one element
    many: bool = False
    # `-` reads standard input, `@path` reads a file, `@@text` is the text `@text`
    readable: bool = False


FREE_TEXT: dict[str, FreeText] = {
    "prompt": FreeText(readable=True),
    "system_prompt": FreeText(readable=True),
    "generation.stop": FreeText(many=True),  # stop strings
}

# Paths on this machine (files or dirs the run reads or writes).
PATH_KEYS: tuple[str, ...] = (
    "prompts_file",
    "data.train_file",
    "data.eval_file",
    "model.path",
    "device_map.offload_folder",
    "train.output_dir",
    "launcher.hostfile",
    "cache_dir",
    "task.adapter",  # task=merge
    "task.output_dir",  # task=merge
)

# A name or a path (task=test's `task.model`: a model option or a checkpoint dir): taken as a path only when
# it names something that exists relative to the start directory.
NAME_OR_PATH_KEYS: tuple[str, ...] = ("task.model",)
