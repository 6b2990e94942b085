#!/usr/bin/env bash
# On the GPU machine: a fresh virtual environment that sees the machine's own
# JAX and PyTorch (--system-site-packages) gets the brought wheels (no index),
# checks that the backend (BACKEND=jax, the default, or BACKEND=torch) sees the
# GPU, and runs the paper's protocol for one sparsity within a
# wall-clock limit; what it reached is written under $OUT (the device tool
# brings it back) and the run folder can be resumed by a later call.
#
#   bash benchmarks/device/run_paper.sh [PRUNE_RATE] [MAX_MINUTES] [extra flags]
#
# Prepare here first: bash benchmarks/device/fetch_wheels.sh; then run with
# the device tool, carry=["benchmarks/device/wheels"]. The first call decodes
# the CIFAR-10 archive (about a minute); extra flags go to paper_protocol.py
# (e.g. --max_epochs=2 for a step-time measurement). REQUIRE_GPU=0 lets it run
# on a CPU (a dry run of the script itself).
set -euo pipefail
cd "$(dirname "$0")/../.."
RATE="${1:-0.9}"
MINUTES="${2:-8}"
shift $(( $# > 2 ? 2 : $# ))
OUT="${OUT:-/tmp/out}"
BACKEND="${BACKEND:-jax}"
RUN_DIR="${OUT}/paper_protocol_r32_${RATE}_${BACKEND}"
mkdir -p "${OUT}"

python3 -m venv --system-site-packages /tmp/hs_venv
/tmp/hs_venv/bin/python -m pip install -q --no-index --no-deps \
    benchmarks/device/wheels/*.whl
export KERAS_BACKEND="${BACKEND}" PYTHONPATH="${PWD}" REQUIRE_GPU="${REQUIRE_GPU:-1}"
/tmp/hs_venv/bin/python - <<'PY'
import os

if os.environ["KERAS_BACKEND"] == "torch":
    import torch

    print("PyTorch", torch.__version__, "CUDA:", torch.cuda.is_available())
    if not torch.cuda.is_available() and os.environ.get("REQUIRE_GPU") != "0":
        raise SystemExit("PyTorch sees no GPU here")
else:
    import jax

    devices = jax.devices()
    print("JAX", jax.__version__, devices)
    gpu = any(d.platform == "gpu" for d in devices)
    if not gpu and os.environ.get("REQUIRE_GPU") != "0":
        raise SystemExit("JAX sees no GPU here")
PY
# The archive: ../shared/data beside the checkout, or shared/data inside the
# copy the device tool makes (ARCHIVE=... overrides both).
ARCHIVE="${ARCHIVE:-../shared/data/cifar10-jpeg.tar.gz}"
if [ ! -f "${ARCHIVE}" ] && [ -f shared/data/cifar10-jpeg.tar.gz ]; then
    ARCHIVE=shared/data/cifar10-jpeg.tar.gz
fi
/tmp/hs_venv/bin/python benchmarks/paper_protocol.py --archive="${ARCHIVE}" \
    --prune_rate="${RATE}" --max_minutes="${MINUTES}" \
    --cache_dir=/tmp/cifar_cache --output_dir="${RUN_DIR}" "$@" \
    2>&1 | tee "${OUT}/paper_protocol.log" | grep -v "^I0000\|^W0000"
