#!/usr/bin/env bash
# gemma-run's GPU suite. Run from anywhere on a machine with a CUDA GPU (the wheels its image lacks in .whl/,
# see bench/gpu_env.sh):
#   bash bench/gpu_suite.sh [PART ...]          no PART: tests decode mission train plan build kernels quality, in that order
# Parts:
#   tests     every `pytest -m gpu` test, with each test's duration, in GEMMA_RUN_GPU_WORKERS (default 3)
#             pytest-xdist processes sharing the GPU (their builds and compiles run side by side on the CPU; one
#             process without pytest-xdist); the tests build the published models at their real width with a few
#             layers (tests/helpers/shapes.py): the real sizes are measured by the other parts
#   decode    the decode presets (gemma_run/conf/experiment/bench/decode_*.yaml) and their baselines, transformers'
#             generate(); decode:NAME runs the runs whose name starts with decode_NAME (decode:4b, decode:27b, decode:gemma4)
#   train     bench/train_speed.py: the training presets beside the plain-Trainer baseline; train:NAME runs the
#             rows whose name holds NAME (train:QLoRA, train:27B, train:Gemma)
#   plan      bench/plan_accuracy.py: task=plan's memory plan against what the GPU allocates
#   build     bench/random_build_peak.py: the peak of random gemma3_4b and gemma3_27b built in memory (quantized unit
#             by unit) against the plan's weights + one unit
#   kernels   bench/kernels_4bit.py: gemma3_27b's batch-1 products, backend by backend
#   quality   bench/quality_4bit.py: how far NF4 and int4 move the whole random gemma3_27b's greedy tokens against
#             bf16; quality:MODEL for another model
#   mission   the mission's command as typed (task=infer model=gemma3_27b quant=4bit, one prompt, 128 new tokens)
#             on an empty compile cache, beside generate(); mission:MODEL for another model
# Each part's whole output goes to $OUT/<part>.log (else gpu-logs/<part>.log), the runs' dirs to $OUT/runs/; the
# output ends with every part's table. All parts share one model cache and one compile cache under /tmp, so a
# later part (or a later run on the same machine) loads what an earlier one built or compiled.
# A whole part may take longer than a 10-minute session on a machine: decode:4b and decode:27b fit one each.
set -uo pipefail
cd "$(dirname "$0")/.."
. bench/gpu_env.sh || exit 1
logs=$(mkdir -p "${OUT:-gpu-logs}" && cd "${OUT:-gpu-logs}" && pwd)
export GEMMA_RUN_CACHE=${GEMMA_RUN_CACHE:-/tmp/gemma-run-cache}
export GEMMA_RUN_TEST_CACHE=$GEMMA_RUN_CACHE TORCHINDUCTOR_CACHE_DIR=$GEMMA_RUN_CACHE/torchinductor

# name|overrides: a decode preset, then the baseline measured beside it
DECODE=(
  "decode_4b|+experiment=bench/decode_4b"
  "decode_4b.layers|+experiment=bench/decode_4b generation.compile_scope=layers"
  "decode_4b.generate|+experiment=bench/decode_4b generation.engine=hf task.batch_sizes=[1]"
  "decode_27b_nf4.generate|+experiment=bench/decode_27b_nf4 generation.engine=hf"
  "decode_27b_nf4|+experiment=bench/decode_27b_nf4"
  "decode_27b_nf4.gemv4|+experiment=bench/decode_27b_nf4 generation.kernel_4bit=gemv4"
  "decode_27b_int4|+experiment=bench/decode_27b_int4"
  "decode_27b_int4.layers|+experiment=bench/decode_27b_int4 generation.compile_scope=layers"
  "decode_gemma4_31b_nf4.generate|+experiment=bench/decode_gemma4_31b_int4 quant=4bit quant.infer_as=keep generation.engine=hf"
  "decode_gemma4_31b_int4|+experiment=bench/decode_gemma4_31b_int4"
  "decode_gemma4_26b_a4b.generate|+experiment=bench/decode_gemma4_26b_a4b generation.engine=hf"
  "decode_gemma4_26b_a4b|+experiment=bench/decode_gemma4_26b_a4b"
)

part_tests() {
  # --durations=0: every test's time, slowest first; faulthandler_timeout: a test still running after 300 s prints
  # its threads' stacks (it is not stopped). Each test is a few seconds of GPU work and up to a minute or two of
  # building and compiling on the CPU, so a few processes on one GPU finish the suite in a fraction of the time.
  local workers=()
  python3 -c "import xdist" 2>/dev/null && workers=(-n "${GEMMA_RUN_GPU_WORKERS:-3}" --dist load)
  python3 -m pytest tests -m gpu -q -p no:cacheprovider -rfE --durations=0 -o faulthandler_timeout=300 \
    "${workers[@]}" --junitxml="$logs/tests.xml"
  local rc=$?
  python3 - "$logs/tests.xml" <<'EOF'
import sys
import xml.etree.ElementTree as ET

suite = ET.parse(sys.argv[1]).getroot()
suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
cases = suite.findall("testcase")
failed = [c for c in cases if c.find("failure") is not None or c.find("error") is not None]
skipped = sum(c.find("skipped") is not None for c in cases)
print(f"| gpu tests | passed | failed | skipped |\n|---|---|---|---|\n"
      f"| {len(cases)} | {len(cases) - len(failed) - skipped} | {len(failed)} | {skipped} |")
for c in failed:
    print(f"| failed: {c.get('classname')}::{c.get('name')} | | | |")
EOF
  return $rc
}

part_decode() {  # $1: a name prefix after decode_ (empty: every run)
  local rc=0 names=() entry name overrides
  for entry in "${DECODE[@]}"; do
    name=${entry%%|*}
    [[ $name == "decode_$1"* ]] || continue
    names+=("$name")
    read -r -a overrides <<<"${entry#*|}"  # words, never globbed ([1] stays as it is)
    echo "$ gemma-run ${overrides[*]}"
    python3 -m gemma_run.app.cli "${overrides[@]}" "hydra.run.dir=$logs/runs/$name" || rc=1
  done
  python3 - "$logs/runs" "${names[@]}" <<'EOF'
import json
import sys
from pathlib import Path

print("| run | engine | batch | decode tok/s | all sequences | of its limit | limit tok/s | warm-up s | GPU |")
print("|---|---|---|---|---|---|---|---|---|")
for name in sys.argv[2:]:
    path = Path(sys.argv[1]) / name / "bench.json"
    if not path.is_file():
        print(f"| {name} | failed: no bench.json (see the log) | | | | | | | |")
        continue
    data = json.loads(path.read_text())
    gpus = ", ".join(data["environment"]["gpus"]) or "cpu"
    for r in data["rows"]:
        fraction = "-" if r["limit_fraction"] is None else f"{r['limit_fraction']:.1%}"
        print(f"| {name} | {data['generation']['engine']} | {r['batch']} | {r['decode_tokens_per_second']} | "
              f"{r['decode_throughput']} | {fraction} | {r['limit_tokens_per_second']} | {r['warmup_seconds']} | "
              f"{gpus} |")
EOF
  return $rc
}

part_mission() {  # $1: a model (default gemma3_27b)
  # The mission's command as a user types it (one prompt, 128 new tokens, quant=4bit: int4 on one GPU) on an empty
  # compile cache, the same kept NF4 through gemma-run's 4-bit kernel, then NF4 through transformers' generate()
  # (the baseline): seconds from the command's start to its end, the load, the first token and decode tok/s, the
  # format that loaded, the engine and 4-bit kernel, from the run's result.json.
  local model=${1:-gemma3_27b} rc=0 name
  for name in gemma-run gemma-run.gemv4 generate; do
    local extra=() dir="$logs/runs/mission_$name" start
    [[ $name == generate ]] && extra=(generation.engine=hf quant.infer_as=keep)
    [[ $name == gemma-run.gemv4 ]] && extra=(generation.kernel_4bit=gemv4)
    mkdir -p "$logs/runs"
    start=$(date +%s.%N)
    TORCHINDUCTOR_CACHE_DIR=$(mktemp -d) python3 -m gemma_run.app.cli task=infer "model=$model" model.weights=random \
      quant=4bit "prompt=Write a short story about a robot who learns to paint." generation.max_new_tokens=128 \
      "${extra[@]}" "hydra.run.dir=$dir" >"$dir.out" 2>"$dir.err" || rc=1
    echo "$start $(date +%s.%N)" >"$dir.wall"
  done
  python3 - "$logs/runs" <<'EOF'
import json
import sys
from pathlib import Path

print("| mission command | 4-bit format | engine | 4-bit kernel | total s | load s | first token s after load | decode tok/s | new tokens |")
print("|---|---|---|---|---|---|---|---|---|")
for name in ("gemma-run", "gemma-run.gemv4", "generate"):
    run = Path(sys.argv[1]) / f"mission_{name}"
    if not (run / "result.json").is_file():
        print(f"| {name} | failed: no result.json (see {run}.err) | | | | | | | |")
        continue
    r = json.loads((run / "result.json").read_text())
    r = r.get("result", r)
    start, end = (float(x) for x in Path(f"{run}.wall").read_text().split())
    fmt = (r.get("quant_loaded") or {}).get("format", "nf4")
    print(f"| {name} | {fmt} | {r.get('engine')} | {r.get('kernel_4bit', '-')} | {end - start:.1f} | {r.get('load_seconds')} | "
          f"{r.get('time_to_first_token_s')} | {r.get('tokens_per_second')} | {r.get('new_tokens')} |")
EOF
  return $rc
}

part_train() { python3 bench/train_speed.py ${1:+"$1"} --out "$logs"; }
part_plan() { python3 bench/plan_accuracy.py --json "$logs/plan_accuracy.json"; }
part_kernels() { python3 bench/kernels_4bit.py --out "$logs"; }
part_quality() { python3 bench/quality_4bit.py --model "${1:-gemma3_27b}" --layers 0 --out "$logs"; }
part_build() {
  local rc=0
  python3 bench/random_build_peak.py --model gemma3_4b --quant none 4bit int4 || rc=1
  python3 bench/random_build_peak.py --model gemma3_27b --quant 4bit int4 || rc=1
  return $rc
}

parts=("$@")
[[ ${#parts[@]} -gt 0 ]] || parts=(tests decode mission train plan build kernels quality)
status=0
for part in "${parts[@]}"; do
  kind=${part%%:*}
  arg=""
  [[ $part == *:* ]] && arg=${part#*:}
  if ! declare -F "part_$kind" >/dev/null; then
    echo "unknown part '$part': tests, decode[:NAME], mission[:MODEL], train[:NAME], plan, build, kernels," \
      "quality[:MODEL]" >&2
    status=2
    continue
  fi
  echo "=== $part ==="
  "part_$kind" "$arg" 2>&1 | tee "$logs/${part//:/-}.log"
  [[ ${PIPESTATUS[0]} -eq 0 ]] || status=1
done
for part in "${parts[@]}"; do
  log="$logs/${part//:/-}.log"
  [[ -f $log ]] || continue
  echo
  echo "=== $part ($log)"
  grep '^|' "$log" || echo "(no table: see the log)"
done
exit $status
