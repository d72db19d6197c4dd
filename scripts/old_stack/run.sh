#!/usr/bin/env bash
# Prove gemma-run on the seeds' old stack (torch 2.2 + transformers 4.53, Python 3.10) in a separate venv:
# install, import every module, load + generate on the tiny model, run task=test, and show the
# torch.get_default_device shim applied. Prints everything; exits non-zero if a step that must pass fails.
#
#   scripts/old_stack/run.sh                 # venv in /tmp/gemma-run-old-stack (reused when present)
#   OLD_STACK_PYTHON=python3.11 OLD_STACK_VENV=/tmp/os311 scripts/old_stack/run.sh
#
# Cost: ~3 GB of downloads (torch's CUDA wheel + nvidia-* from PyPI; the CPU wheel lives only on
# download.pytorch.org), 5.3 GB on disk, 2-13 min to install (network-bound), ~1.5 min to run with the venv
# in place. Not part of the default CI run; docs/old_stack.md holds a recorded run.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
PY="${OLD_STACK_PYTHON:-}"
if [[ -z "$PY" ]]; then
  for cand in python3.10 "$HOME/.pyenv/versions/3.10.13/bin/python3.10"; do
    if "$cand" -c 'import sys; assert sys.version_info[:2] == (3, 10)' 2>/dev/null; then PY="$cand"; break; fi
  done
fi
[[ -n "$PY" ]] || { echo "no Python 3.10 found: set OLD_STACK_PYTHON" >&2; exit 2; }
VENV="${OLD_STACK_VENV:-/tmp/gemma-run-old-stack}"
WORK="$(mktemp -d /tmp/gemma-run-old-stack-run.XXXX)"
export GEMMA_RUN_CACHE="$WORK/cache" OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}" PIP_DISABLE_PIP_VERSION_CHECK=1

step() { printf '\n=== %s\n' "$*"; }

step "venv $VENV with $("$PY" --version)"
[[ -x "$VENV/bin/python" ]] || "$PY" -m venv "$VENV"
start=$(date +%s)
"$VENV/bin/pip" install -q -c "$HERE/constraints.txt" "$REPO" 2>&1 | grep -v "^WARNING: Location" || true
"$VENV/bin/pip" install -q -c "$HERE/constraints.txt" --force-reinstall --no-deps "$REPO" 2>&1 \
  | grep -v "^WARNING: Location" || true  # this tree, even when the venv already had an older copy
echo "installed in $(( $(date +%s) - start )) s; venv size $(du -sh "$VENV" | cut -f1)"
"$VENV/bin/pip" list 2>/dev/null | grep -E -i '^(torch|transformers|accelerate|peft|hydra-core|omegaconf|numpy|tokenizers|safetensors|datasets|gemma-run) '

step "the stack: torch.get_default_device is missing; transformers refuses torch.load"
"$VENV/bin/python" - <<'PY'
import sys, torch, transformers
print(f"python {sys.version.split()[0]}, torch {torch.__version__}, transformers {transformers.__version__}")
print("torch has get_default_device:", hasattr(torch, "get_default_device"))
from transformers.utils.import_utils import check_torch_load_is_safe
try:
    check_torch_load_is_safe()
    print("torch.load allowed by transformers")
except ValueError as e:
    print("torch.load refused by transformers:", str(e).split(".")[0])
PY

step "every gemma_run module imports (Python 3.10, transformers 4.53 APIs)"
"$VENV/bin/python" - <<'PY'
import importlib, pkgutil, gemma_run
bad = []
names = [m.name for m in pkgutil.walk_packages(gemma_run.__path__, "gemma_run.")]
for name in names:
    try:
        importlib.import_module(name)
    except Exception as e:  # report them all, then fail
        bad.append(f"{name}: {type(e).__name__}: {e}")
print(f"{len(names) - len(bad)}/{len(names)} modules import")
print("\n".join(bad))
raise SystemExit(1 if bad else 0)
PY

cd "$WORK"
step "gemma-run model=tiny_gemma3 prompt=hi  (loads and generates through the normal path; shim logged)"
"$VENV/bin/gemma-run" model=tiny_gemma3 prompt=hi generation.max_new_tokens=8 2>&1 | grep -v "it/s]$"
res=$(ls -d outputs/*/* | tail -1)/result.json
"$VENV/bin/python" -c "import json,sys; r=json.load(open(sys.argv[1])); print({k: r[k] for k in ('status','shims','dtype','new_tokens')})" "$res"

step "gemma-run task=test  (the doctor on the old stack: the shim reported applied)"
set +e
"$VENV/bin/gemma-run" task=test 2>&1 | grep -v "it/s]$" | grep -v "\]\[.*\]\[INFO\] - check "
code=${PIPESTATUS[0]}
set -e
echo "exit code: $code"
[[ $code -eq 0 ]] || { echo "task=test failed on the old stack" >&2; exit 1; }

step "without the shim (~plugins.shims): does transformers 4.53 itself need it? (it guards its call by version)"
set +e
"$VENV/bin/gemma-run" '~plugins.shims' prompt=hi generation.max_new_tokens=4 >/dev/null 2>"$WORK/noshim.log"
echo "infer without the shim: exit $? ($(grep -c get_default_device "$WORK/noshim.log") mentions of get_default_device)"
"$VENV/bin/gemma-run" '~plugins.shims' task=test task.checks=[shims] 2>/dev/null | grep -E "shims\.|overall"
echo "task=test without the shim: exit ${PIPESTATUS[0]} (1 expected: torch 2.2 lacks the function, so the doctor" \
  "fails a run that skipped the shim; transformers 4.53 guards its own call, 5.x and other callers do not)"
set -e

step "the doctor's tests on this stack (pytest tests/test_doctor.py)"
"$VENV/bin/pip" install -q "pytest>=8" 2>&1 | grep -v "^WARNING: Location" || true
# From the work dir, so the installed gemma_run is tested, not the source tree's.
GEMMA_RUN_TEST_CACHE="$WORK/test-cache" "$VENV/bin/python" -m pytest "$REPO/tests/test_doctor.py" -q \
  -p no:cacheprovider 2>&1 | tail -4
[[ ${PIPESTATUS[0]} -eq 0 ]] || { echo "the doctor's tests failed on the old stack" >&2; exit 1; }
echo; echo "old stack OK (work dir $WORK)"
