"""A model trained under JAX (or PyTorch) and saved as `.keras` loads under
TensorFlow with its regularizer and masks, and exports to TFLite: two
processes, as a user would do it."""

import importlib.util
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

import hypersparse_tf
from hypersparse_tf import export
from hypersparse_tf import mask_constraints

_TRAIN = """
import sys
import keras
import numpy as np
import hypersparse_tf

keras.utils.set_random_seed(0)
inputs = keras.Input((12,))
h = keras.layers.Dense(16, activation="relu", name="a")(inputs)
outputs = keras.layers.Dense(3, name="b")(h)
model = keras.Model(inputs, outputs)
reg = hypersparse_tf.HyperSparse(0.5, coefficient=1e-3)
hypersparse_tf.attach(model, reg)
masks = hypersparse_tf.global_magnitude_masks(model, 0.5)
hypersparse_tf.fix_masks(model, masks)
model.compile(optimizer="adam", loss="mse")
rng = np.random.default_rng(0)
x = rng.normal(size=(64, 12)).astype("float32")
reg.update_statistics()
model.fit(x, rng.normal(size=(64, 3)), epochs=2, verbose=0)
folder = sys.argv[1]
model.save(folder + "/model.keras")
np.save(folder + "/x.npy", x)
np.save(folder + "/y.npy", keras.ops.convert_to_numpy(model(x)))
np.savez(folder + "/masks.npz", **masks)
print("trained on", keras.backend.backend())
"""


@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_a_model_trained_on_another_backend_loads_and_exports(backend, tmp_path):
    if importlib.util.find_spec(backend) is None:
        pytest.skip(f"{backend} is not installed")
    result = subprocess.run(
        [sys.executable, "-c", _TRAIN, str(tmp_path)],
        capture_output=True,
        text=True,
        env=dict(os.environ, KERAS_BACKEND=backend),
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"trained on {backend}" in result.stdout
    model = keras.saving.load_model(tmp_path / "model.keras")
    x, y = np.load(tmp_path / "x.npy"), np.load(tmp_path / "y.npy")
    np.testing.assert_allclose(model.predict(x, verbose=0), y, atol=1e-5)
    masks = np.load(tmp_path / "masks.npz")
    for name in "ab":
        layer = model.get_layer(name)
        assert isinstance(layer.kernel_regularizer, hypersparse_tf.HyperSparse)
        constraint = layer.kernel_constraint
        assert isinstance(constraint, mask_constraints.MaskConstraint)
        kept = keras.ops.convert_to_numpy(constraint.mask) != 0
        np.testing.assert_array_equal(kept, masks[f"{name}/kernel"])
        assert np.all(layer.kernel.numpy()[~kept] == 0)
    tflite = export.to_tflite(model, "mobile")
    np.testing.assert_allclose(export.run_tflite(tflite, x), y, atol=1e-4)
