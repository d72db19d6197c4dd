# Source on the GPU machine (device tool), from the repository root, with .whl carried:
#   . bench/gpu_env.sh
# Installs the wheels the image lacks (bitsandbytes, deepspeed, hydra, datasets ...; fetched here with
# ../shared/tools/device-wheels plus datasets/dill/multiprocess/setuptools) into /tmp/site, then gemma-run itself
# (editable, no deps) so `gemma_run.conf` resolves to conf/ as in any install.
set -o pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || return 1
export PYTHONPATH=/tmp/site
python3 -m pip install -q --no-index --no-deps --no-build-isolation -e . >/tmp/gr-install.log 2>&1 || { cat /tmp/gr-install.log; return 1; }
export GEMMA_RUN_CACHE=/tmp/gemma-run-cache PYTHONUNBUFFERED=1
python3 -c "import torch, transformers, bitsandbytes, deepspeed, gemma_run; print('gpu env:', torch.__version__, transformers.__version__, bitsandbytes.__version__, deepspeed.__version__, torch.cuda.get_device_name())"
