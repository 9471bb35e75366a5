#!/usr/bin/env bash
# One entry point for a fresh machine: creates or reuses ./.venv, installs specmae with
# its test and plot extras, then runs a job.
#
#   bash scripts/dev.sh demo [RUN_DIR]   pre-train a small model on the built-in corpus
#   bash scripts/dev.sh test [PYTEST_ARGS...]
#   bash scripts/dev.sh specmae ARGS...  any specmae command inside the environment
#
# A torch that the calling Python already has (a CUDA build, say) is kept: the venv then
# sees the system site-packages. Otherwise the CPU build torch==2.13.0 is installed.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${SPECMAE_VENV:-.venv}
python=${PYTHON:-python3}

if [ ! -x "$venv/bin/python" ]; then
    if "$python" -c "import torch" 2>/dev/null; then
        "$python" -m venv --system-site-packages "$venv"
    else
        "$python" -m venv "$venv"
    fi
fi
pip() { "$venv/bin/python" -m pip --disable-pip-version-check -q "$@"; }
if ! "$venv/bin/python" -c "import torch" 2>/dev/null; then
    pip install "torch==2.13.0"
fi
stamp="$venv/.specmae-installed"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    pip install -e ".[dev]"
    touch "$stamp"
fi

job=${1:-}
shift || true
case "$job" in
    demo) exec "$venv/bin/specmae" pretrain --config demo --out "${1:-runs/demo}" ;;
    test) exec "$venv/bin/python" -m pytest "$@" ;;
    specmae) exec "$venv/bin/specmae" "$@" ;;
    *) echo "usage: bash scripts/dev.sh demo [RUN_DIR] | test [PYTEST_ARGS...] | specmae ARGS..." >&2; exit 2 ;;
esac
