"""``python -m gemma_run ...``: the same as the ``gemma-run`` command."""

from gemma_run.app.cli import main

main()
