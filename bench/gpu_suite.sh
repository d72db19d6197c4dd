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
    trainfused) timeout 240 python3 -m pytest tests/test_train_fused_gpu.py -m gpu -s -q -p no:cacheprovider ;;
    trainfast) python3 -m pytest tests/test_train_fast_gpu.py -m gpu -s -q -p no:cacheprovider ;;
    trainspeed) python3 bench/train_speed.py ;;
    plan)   python3 bench/plan_accuracy.py ;;
    bench)  python3 -m pytest tests/test_bench_gpu.py -m gpu -s -q -p no:cacheprovider ;;
    compile) (cd /tmp && timeout 300 python3 -m gemma_run.cli task=bench model=gemma3_4b model.weights=random \
              generation.cache_implementation=static generation.compile=true task.batch_sizes=[1]) ;;
    fast4b) (cd /tmp && timeout 330 python3 -m gemma_run.cli -m task=bench model=gemma3_4b model.weights=random \
              generation.engine=fast quant=none,4bit task.batch_sizes=[1,8]) ;;
    fastwarm) (cd /tmp && timeout 120 python3 -m gemma_run.cli task=bench model=gemma3_4b model.weights=random \
              generation.engine=fast task.batch_sizes=[1]) ;;
    variants) timeout 540 python3 bench/decode_variants.py gemma3_4b ;;
    decode4b) (cd /tmp && timeout 380 python3 -m gemma_run.cli task=bench model=gemma3_4b model.weights=random \
              generation.engine=fast task.batch_sizes=[1,8] \
              && timeout 90 python3 -m gemma_run.cli task=bench model=gemma3_4b model.weights=random \
              generation.engine=fast task.batch_sizes=[1] \
              && timeout 100 python3 -m gemma_run.cli task=bench model=gemma3_4b model.weights=random \
              generation.engine=hf task.batch_sizes=[1]) ;;
    decode27b) (cd /tmp && timeout 400 python3 -m gemma_run.cli task=bench model=gemma3_27b model.weights=random \
              quant=4bit generation.engine=fast task.batch_sizes=[1] \
              && timeout 150 python3 -m gemma_run.cli task=bench model=gemma3_27b model.weights=random quant=4bit \
              generation.engine=hf task.batch_sizes=[1]) ;;
    decodetests) python3 -m pytest tests/test_fast_decode_gpu.py -m gpu -s -q -p no:cacheprovider -k "tiny or 4bit" ;;
    graphs) python3 -m pytest tests/test_fast_decode_gpu.py -m gpu -s -q -p no:cacheprovider -k tiny
            (cd /tmp && timeout 240 python3 -m gemma_run.cli -m task=bench model=gemma3_4b model.weights=random \
              generation.compile=false quant=none,int4,4bit task.batch_sizes=[1]
            timeout 200 python3 -m gemma_run.cli task=bench model=gemma3_4b model.weights=random quant=int4 \
              task.batch_sizes=[1]) ;;
    kernels) timeout 200 python3 bench/kernels_4bit.py ;;
    int4layouts) timeout 300 python3 bench/int4_layouts.py ;;
    lmhead27b) (cd /tmp && timeout 330 python3 -m gemma_run.cli task=bench model=gemma3_27b model.weights=random \
              quant=int4 quant.lm_head=int4 task.batch_sizes=[1]) ;;
    int4profile) timeout 280 python3 bench/engine_profile.py gemma3_4b decode fused int4
                 timeout 250 python3 bench/engine_profile.py gemma3_4b decode unfused int4 ;;
    headab) timeout 560 python3 bench/head_ab.py gemma3_27b ;;
    headint4) timeout 200 python3 bench/head_int4.py ;;
    int4_4b) (cd /tmp && timeout 300 python3 -m gemma_run.cli -m task=bench model=gemma3_4b model.weights=random \
              quant=int4 generation.fuse_projections=true,false task.batch_sizes=[1]) ;;
    stackedtests) timeout 120 python3 -m pytest tests/test_fused_projections.py -m gpu -s -q -p no:cacheprovider ;;
    engineprofile) timeout 400 python3 bench/engine_profile.py gemma3_4b ;;
    stepoptions) timeout 560 python3 bench/step_options.py gemma3_4b ;;
    fusedprofile) timeout 300 python3 bench/engine_profile.py gemma3_4b decode fused ;;
    graphtests) python3 -m pytest tests/test_fast_decode_gpu.py -m gpu -s -q -p no:cacheprovider -k tiny ;;
    graphs27b) (cd /tmp && timeout 280 python3 -m gemma_run.cli -m task=bench model=gemma3_27b \
              model.weights=random generation.compile=false quant=int4,4bit task.batch_sizes=[1]) ;;
    seed27b) (cd /tmp && timeout 170 python3 -m gemma_run.cli task=bench model=gemma3_27b model.weights=random \
              quant=4bit generation.engine=hf task.batch_sizes=[1]) ;;
    compiled4b) (cd /tmp && timeout 330 python3 -m gemma_run.cli task=bench model=gemma3_4b model.weights=random \
              task.batch_sizes=[1,8]) ;;
    compiled4b1) (cd /tmp && timeout 200 python3 -m gemma_run.cli task=bench model=gemma3_4b model.weights=random \
              task.batch_sizes=[1]) ;;
    int4top1) timeout 240 python3 -m pytest tests/test_fast_decode_gpu.py -m gpu -s -q -p no:cacheprovider -k int4 ;;
    compiled27b) (cd /tmp && timeout 400 python3 -m gemma_run.cli task=bench model=gemma3_27b model.weights=random \
              quant=int4 task.batch_sizes=[1]) ;;
    trainvariants) (cd /tmp && timeout 200 python3 -m gemma_run.cli -m task=bench_train model=gemma3_4b \
              model.weights=random train.max_seq_length=2048 train.per_device_batch_size=4 \
              train.gradient_checkpointing=true task.steps=8 task.warmup_steps=2 deepspeed=none \
              train.attn_implementation=eager,sdpa train.loss_kernel=liger) ;;
    attn4b) (cd /tmp && timeout 430 python3 -m gemma_run.cli -m task=bench model=gemma3_4b model.weights=random \
              generation.step_attention=decode,model task.batch_sizes=[1]) ;;
    eagerattn4b) (cd /tmp && timeout 150 python3 -m gemma_run.cli -m task=bench model=gemma3_4b model.weights=random \
              generation.compile=false generation.step_attention=decode,model task.batch_sizes=[1]) ;;
    exact4b) (cd /tmp && timeout 300 python3 -m gemma_run.cli task=bench model=gemma3_4b model.weights=random \
              generation.exact=false task.batch_sizes=[1,8]) ;;
    fused4b) (cd /tmp && timeout 420 python3 -m gemma_run.cli -m task=bench model=gemma3_4b model.weights=random \
              generation.fuse_projections=true,false task.batch_sizes=[1]) ;;
    streamtests) timeout 300 python3 -m pytest tests/test_fast_decode_gpu.py -m gpu -s -q -p no:cacheprovider \
              -k "tiny or streaming" ;;
    trainprofile) (cd /tmp && timeout 150 python3 -m gemma_run.cli task=bench_train model=gemma3_4b \
              model.weights=random train.max_seq_length=2048 train.per_device_batch_size=4 \
              train.gradient_checkpointing=true task.steps=2 task.warmup_steps=2 task.profile=true \
              hydra.run.dir=/tmp/trainprofile && head -60 /tmp/trainprofile/profile.txt) ;;
    traincompile) (cd /tmp && timeout 560 python3 -m gemma_run.cli -m task=bench_train model=gemma3_4b \
              model.weights=random train.max_seq_length=2048 train.per_device_batch_size=4 \
              train.gradient_checkpointing=true task.steps=10 task.warmup_steps=2 \
              train.compile_layers=true,false quant=none,4bit) ;;
    trainprobe) for v in base flash reentrant both base; do
              (cd /tmp && timeout 110 python3 "$OLDPWD/bench/train_probe.py" $v task=bench_train model=gemma3_4b \
                model.weights=random train.max_seq_length=2048 train.per_device_batch_size=4 \
                train.gradient_checkpointing=true task.steps=10 task.warmup_steps=2 train.gpu_memory_cap=20GiB \
                hydra.run.dir=/tmp/probe-$v-$RANDOM 2>&1 | grep -E "^probe:|^\| gemma" | sed "s/^/$v: /"
               python3 -c "import json,glob,os; f=max(glob.glob('/tmp/probe-$v-*/bench_train.json'), key=os.path.getmtime); \
r=json.load(open(f)); print('$v', r['tokens_per_second'], r['tokens_per_second_mean'], r['peak_memory_gib'], r['step_seconds'])")
            done ;;
    picktests) timeout 200 python3 -m pytest tests/test_fast_decode_gpu.py -m gpu -s -q -p no:cacheprovider \
              -k "tiny or streaming" ;;
    picktests1) timeout 150 python3 -m pytest tests/test_fast_decode_gpu.py -m gpu -s -q -p no:cacheprovider \
              -k "compiled-decode-attention-fused or streaming" ;;
    bf16kernels) TORCHINDUCTOR_CACHE_DIR=/tmp/gemma-run-cache/torchinductor timeout 260 python3 bench/engine_profile.py gemma3_4b decode fused none \
              && python3 bench/inductor_kernels.py
              for run in cold warm; do (cd /tmp && timeout 120 python3 -m gemma_run.cli task=bench model=gemma3_4b \
              model.weights=random task.batch_sizes=[1] task.repeats=3); done ;;
    final27b) (cd /tmp && timeout 120 python3 -m gemma_run.cli task=bench model=gemma3_27b model.weights=random \
              quant=4bit generation.engine=hf task.batch_sizes=[1] \
              ; timeout 280 python3 -m gemma_run.cli task=bench model=gemma3_27b model.weights=random quant=int4 \
              quant.lm_head=int4 task.batch_sizes=[1] task.repeats=3) ;;
    placement) timeout 150 python3 bench/placement_probe.py gemma3_27b int4; timeout 100 python3 bench/placement_probe.py gemma3_4b none ;;
    default27b) (cd /tmp && timeout 285 python3 -m gemma_run.cli task=bench model=gemma3_27b model.weights=random \
              quant=int4 task.batch_sizes=[1] task.repeats=3) ;;
    bf16runs) for run in 1 2 3; do (cd /tmp && timeout 200 python3 -m gemma_run.cli task=bench model=gemma3_4b \
              model.weights=random task.batch_sizes=[1] task.repeats=3); done ;;
    pickab) timeout 560 python3 bench/pick_ab.py gemma3_4b ;;
    pick4b) (cd /tmp && timeout 470 python3 -m gemma_run.cli -m task=bench model=gemma3_4b model.weights=random \
              generation.device_pick=true,false task.batch_sizes=[1] task.repeats=3) ;;
    pick27b) (cd /tmp && timeout 170 python3 -m gemma_run.cli task=bench model=gemma3_27b model.weights=random \
              quant=4bit generation.engine=hf task.batch_sizes=[1] \
              ; for run in cold warm; do timeout 300 python3 -m gemma_run.cli task=bench model=gemma3_27b \
              model.weights=random quant=int4 quant.lm_head=int4 task.batch_sizes=[1] task.repeats=3; done) ;;
    *) echo "unknown part $part"; false ;;
  esac > >(tee "$logs/$part.log") 2>&1 || status=1
done
exit $status
