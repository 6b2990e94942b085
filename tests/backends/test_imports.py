"""What `import hypersparse_tf` pulls in on the running backend, and what
the parts that need TensorFlow say without it."""

import subprocess
import sys

import keras
import pytest

_WITHOUT_TENSORFLOW = """
import sys
sys.modules["tensorflow"] = None  # as if TensorFlow were not installed
import hypersparse_tf
print("imported")
try:
    hypersparse_tf.datasets
except ImportError as error:
    print("datasets:", error)
"""


def _run(code):
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=False
    )


@pytest.mark.skipif(
    keras.backend.backend() == "tensorflow", reason="the TensorFlow backend needs it"
)
def test_import_does_not_import_tensorflow():
    result = _run("import sys, hypersparse_tf; print('tensorflow' in sys.modules)")
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1] == "False"


@pytest.mark.skipif(
    keras.backend.backend() == "tensorflow", reason="the TensorFlow backend needs it"
)
def test_what_needs_tensorflow_says_what_to_install():
    result = _run(_WITHOUT_TENSORFLOW)
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.strip().splitlines()
    assert lines[0] == "imported"
    assert "hypersparse_tf.datasets needs TensorFlow" in lines[1]
    assert "pip install tensorflow" in lines[1]


@pytest.mark.skipif(
    keras.backend.backend() == "tensorflow", reason="converts on this backend"
)
def test_to_tflite_says_to_convert_under_tensorflow():
    from hypersparse_tf import export
    from hypersparse_tf import models

    with pytest.raises(RuntimeError, match="KERAS_BACKEND=tensorflow"):
        export.to_tflite(models.lenet_300_100(), "mobile")
