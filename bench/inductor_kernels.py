"""Which operations each kernel of a compiled decode step runs: reads inductor's generated code in its cache
(env.vars.TORCHINDUCTOR_CACHE_DIR) and prints, for each kernel the largest module (the step) launches, the ATen
operations inductor fused into it (from the comment inductor writes above each definition), so that a profile's
kernel names (bench/engine_profile.py) can be read.

    python3 bench/inductor_kernels.py [cache dir]    (default /tmp/gemma-run-cache/torchinductor)
"""

from __future__ import annotations

import re
import sys
from pathlib import Path


def main() -> int:
    root = Path(sys.argv[1] if len(sys.argv) > 1 else "/tmp/gemma-run-cache/torchinductor")
    modules = [p for p in root.rglob("*.py") if "def call(" in p.read_text(errors="ignore")]
    if not modules:
        print(f"no compiled module under {root}")
        return 1
    step = max(modules, key=lambda p: p.stat().st_size)
    text = step.read_text()
    print(f"{step} ({len(text) // 1024} KiB)")
    ops = None
    for line in text.splitlines():  # each definition follows "# Topologically Sorted ..., Original ATen: [...]"
        found = re.search(r"Original ATen: (\[.*\])", line)
        if found:
            ops = found.group(1)
        defined = re.match(r"^((?:triton|cpp)_\w+) = async_compile\.", line)
        if defined:
            print(f"{defined.group(1)}: {ops or '(no ATen comment: inductor writes them for Triton kernels)'}")
            ops = None
    return 0


if __name__ == "__main__":
    sys.exit(main())
