#!/usr/bin/env bash
# The GPU runs of the issues, in parts that each fit one device call (10 min), e.g. through the device tool:
#   bash bench/gpu_suite.sh infer doctor        (carry .whl)
# Each part's full log goes to $OUT/<part>.log (or ./gpu-logs/); the output ends with each part's table.
set -uo pipefail
cd "$(dirname "$0")/.."
. bench/gpu_env.sh || exit 1
export GEMMA_RUN_TEST_CACHE=$GEMMA_RUN_CACHE
logs=${OUT:-gpu-logs}; mkdir -p "$logs"
status=0
for part in "$@"; do
  echo "=== $part ==="
  case $part in
    infer)  python3 -m pytest tests/test_infer_gpu.py -m gpu -s -q -p no:cacheprovider ;;
    doctor) python3 -m pytest tests/test_doctor.py -m gpu -s -q -p no:cacheprovider \
              && (cd /tmp && python3 -m gemma_run.cli task=test) ;;
    train)  python3 -m pytest tests/test_train_gpu.py -m gpu -s -q -p no:cacheprovider ;;
    plan)   python3 bench/plan_accuracy.py ;;
    bench)  python3 -m pytest tests/test_bench_gpu.py -m gpu -s -q -p no:cacheprovider ;;
    compile) (cd /tmp && timeout 300 python3 -m gemma_run.cli task=bench model=gemma3_4b model.weights=random \
              generation.cache_implementation=static generation.compile=true task.batch_sizes=[1]) ;;
    fast4b) (cd /tmp && timeout 330 python3 -m gemma_run.cli -m task=bench model=gemma3_4b model.weights=random \
              generation.engine=fast quant=none,4bit task.batch_sizes=[1,8]) ;;
    fastwarm) (cd /tmp && timeout 120 python3 -m gemma_run.cli task=bench model=gemma3_4b model.weights=random \
              generation.engine=fast task.batch_sizes=[1]) ;;
    int4probe) timeout 140 python3 bench/int4_probe.py gemma3_4b ;;
    *) echo "unknown part $part"; false ;;
  esac > >(tee "$logs/$part.log") 2>&1 || status=1
done
exit $status
