"""Which operations each kernel of a compiled decode step runs: reads inductor's generated code in its cache
(env.vars.TORCHINDUCTOR_CACHE_DIR) and prints, for each Triton kernel of the largest module (the step), the ATen
operations inductor fused into it, so a profile's kernel names (bench/engine_profile.py) can be read.

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
    for line in text.splitlines():
        if line.startswith("# Original ATen:"):
            ops = line[len("# Original ATen:"):].strip()
        m = re.match(r"^(triton_\w+) = async_compile\.triton\(", line)
        if m:
            print(f"{m.group(1)}: {ops}")
            ops = None
    return 0


if __name__ == "__main__":
    sys.exit(main())
