"""Runs `tests/backends` under every other Keras backend, each in its own
pytest process (Keras reads `KERAS_BACKEND` once, at import).

A backend whose package is not installed is skipped with a message: the JAX
CPU wheel installs with `pip install -e ".[all]"`; `.ci/run` installs
PyTorch's CPU wheel where the machine holds it (PyPI's default is a CUDA build
of several GB), and elsewhere PyTorch's run happens where torch is installed.

    python3 tests/run_backends.py [pytest options]
"""

import importlib.util
import os
import subprocess
import sys

BACKENDS = {"jax": "jax", "torch": "torch"}


def main(argv):
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    failed = []
    for backend, package in BACKENDS.items():
        if importlib.util.find_spec(package) is None:
            print(
                f"tests/backends under {backend}: SKIPPED ({package} is not installed)"
            )
            continue
        print(f"tests/backends under KERAS_BACKEND={backend}:", flush=True)
        result = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "tests/backends", *argv],
            cwd=root,
            env=dict(os.environ, KERAS_BACKEND=backend),
            check=False,
        )
        if result.returncode != 0:
            failed.append(backend)
    if failed:
        print(f"tests/backends failed under: {', '.join(failed)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
