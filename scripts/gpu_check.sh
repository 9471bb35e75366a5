#!/usr/bin/env bash
# The checks that need a GPU, prepared as one short run for a lent device machine, whose image
# has a CUDA torch but not every package specmae needs and no network.
#
#   bash scripts/gpu_check.sh fetch   here: download the missing packages as wheels into .whl/
#   bash scripts/gpu_check.sh run     there: the test suite on the GPU, then the GPU benchmarks
#
# With the device tool: run(command="bash scripts/gpu_check.sh run", carry=[".whl"],
# timeout_s=570). Logs land in $OUT (or ./gpu-check): tests.log (the whole suite, which trains on
# the GPU wherever a CUDA device is visible, bf16 autocast and fused AdamW included), step.log
# (bench_pretrain_step: batch 16 as on the CPU, and batch 256), embed.log, frontend.log. Each
# step has its own time limit, so one that hangs still leaves the others' logs.
set -uo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
# What the device image lacked on 2026-12-01 (the device tool's KINDS.md lists what it holds), at
# the versions the CPU suite runs with.
wheels="soundfile==0.14.0 cffi==2.1.1 pycparser==3.12 soxr==1.1.0 librosa==0.11.0 audioread==3.1.0
        pooch==1.9.0 decorator==5.3.1 platformdirs==4.14.9"

case "${1:-}" in
fetch)
    exec "$python" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
        --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
        --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform any -d .whl $wheels
    ;;
run) ;;
*) echo "usage: bash scripts/gpu_check.sh fetch | run" >&2; exit 2 ;;
esac

out=${OUT:-gpu-check}
mkdir -p "$out"
if compgen -G ".whl/*.whl" >/dev/null; then
    "$python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/specmae-site .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/specmae-site
fi
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1

step() {  # step NAME SECONDS COMMAND...: run with a time limit, log to $out/NAME.log
    local name=$1 limit=$2
    shift 2
    echo "== $name ($limit s): $*" | tee -a "$out/$name.log"
    timeout "$limit" "$@" >>"$out/$name.log" 2>&1
    echo "== $name: exit $?" | tee -a "$out/$name.log"
    tail -n 25 "$out/$name.log"
}

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/env.log"
"$python" -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())" | tee -a "$out/env.log"
step tests 240 "$python" -m pytest -q -p no:cacheprovider tests
step step 150 "$python" benchmarks/bench_pretrain_step.py --device cuda --repeats 20 --breakdown
step step 60 "$python" benchmarks/bench_pretrain_step.py --device cuda --repeats 10 --batch 256 --modes bf16
step embed 60 "$python" benchmarks/bench_embed.py --device cuda --repeats 5
step frontend 30 "$python" benchmarks/bench_frontend.py --device cuda
