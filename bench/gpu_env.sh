# Source on a GPU machine whose image has torch, transformers, accelerate, peft and safetensors but not the rest,
# from the repository root, with the missing wheels in .whl/ (git-ignored; fetched beforehand with
# `pip download --only-binary=:all: --python-version 3.12 -d .whl bitsandbytes hydra-core omegaconf torchao
# liger-kernel datasets deepspeed pytest-xdist ...`, deepspeed and antlr4 built as wheels with `pip wheel`):
#   . bench/gpu_env.sh
# Installs the wheels into /tmp/site (on PYTHONPATH), then gemma-run itself (editable, no deps) so that
# `gemma_run.conf` resolves to gemma_run/conf/ as in any install. Without .whl/ it checks the installed stack only.
set -o pipefail
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || return 1
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
  python3 -m pip install -q --no-index --no-deps --no-build-isolation -e . >/tmp/gr-install.log 2>&1 || { cat /tmp/gr-install.log; return 1; }
fi
export GEMMA_RUN_CACHE=${GEMMA_RUN_CACHE:-/tmp/gemma-run-cache} PYTHONUNBUFFERED=1
python3 -c "import torch, transformers, bitsandbytes, deepspeed, gemma_run; print('gpu env:', torch.__version__, transformers.__version__, bitsandbytes.__version__, deepspeed.__version__, torch.cuda.get_device_name())"
