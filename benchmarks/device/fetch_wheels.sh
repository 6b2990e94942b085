#!/usr/bin/env bash
# Downloads the wheels the GPU machine lacks into benchmarks/device/wheels/
# (ignored by git; carried to the machine with the working tree). That machine
# has Python 3.12 with JAX, PyTorch, NumPy, Pillow and matplotlib, no Keras,
# and no package index. Keras 3 and its pure or small dependencies fit well
# under the 64 MiB the device tool carries; TensorFlow does not (and is not
# needed: see benchmarks/paper_protocol.py). ml-dtypes, packaging and
# typing-extensions are not brought: the machine's JAX, matplotlib and PyTorch
# have them, and a second copy in the venv could break JAX. The device tool
# carries the folder when asked: carry=["benchmarks/device/wheels"].
set -euo pipefail
cd "$(dirname "$0")"
rm -rf wheels && mkdir wheels
KERAS_VERSION="$(python3 -c 'import keras; print(keras.__version__)')"
python3 -m pip download -q --no-deps --only-binary=:all: \
    --python-version 3.12 --implementation cp --abi cp312 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --platform manylinux_2_28_x86_64 --platform any \
    -d wheels \
    "keras==${KERAS_VERSION}" absl-py rich markdown-it-py mdurl pygments namex \
    h5py optree
du -sh wheels
ls wheels
