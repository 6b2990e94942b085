"""The exact threshold on the running Keras backend: bit for bit
`sort(|w|)[k]`, ties and zeros included, eagerly and compiled.

Runs in every backend's own pytest process (`tests/run_backends.py`)."""

import keras
import numpy as np
import pytest

from hypersparse_tf import quantile


def _cases():
    rng = np.random.default_rng(0)
    cases = []
    for _ in range(20):
        n = int(rng.integers(1, 3000))
        values = rng.normal(size=n).astype("float32")
        values[rng.random(n) < 0.3] = 0.0  # many zeros
        values[rng.random(n) < 0.2] = -0.5  # ties, both signs
        values[rng.random(n) < 0.1] = 0.5
        cuts = sorted(int(c) for c in rng.integers(0, n, 3))
        parts = [p for p in np.split(values, cuts) if p.size]
        cases.append((parts, int(rng.integers(0, n))))
    tiny = np.array([1e-45, 0.0, -1e-45, 3e38], "float32")  # denormals, huge
    cases += [([tiny], k) for k in range(4)]
    return cases


def _expected(parts, k):
    return np.sort(np.abs(np.concatenate([np.ravel(p) for p in parts])))[k]


@pytest.mark.parametrize("case", range(24))
def test_kth_smallest_magnitude_is_the_sorted_value_bit_for_bit(case):
    parts, k = _cases()[case]
    tensors = [keras.ops.convert_to_tensor(p) for p in parts]
    got = keras.ops.convert_to_numpy(quantile.kth_smallest_magnitude(tensors, k))
    assert got.dtype == np.float32
    assert got.tobytes() == _expected(parts, k).tobytes()


def _compiled(function):
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        return tf.function(function, autograph=False)
    if backend == "jax":
        import jax

        return jax.jit(function)
    return function  # torch, numpy: eager


def test_kth_smallest_magnitude_compiled():
    rng = np.random.default_rng(1)
    kernels = [rng.normal(size=s).astype("float32") for s in ((3, 3, 8, 16), (64, 10))]
    kernels[0][..., :4] = 0.0
    total = sum(k.size for k in kernels)
    select = _compiled(
        lambda a, b: quantile.kth_smallest_magnitude([a, b], int(0.9 * total))
    )
    got = keras.ops.convert_to_numpy(select(*map(keras.ops.convert_to_tensor, kernels)))
    assert got.tobytes() == _expected(kernels, int(0.9 * total)).tobytes()
