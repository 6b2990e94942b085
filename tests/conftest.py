"""Shared fixtures: tiny models of every prunable layer kind."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402


def mixed_model(seed=0, kernel_regularizer=None):
    """Conv, BatchNorm, depthwise, separable and dense layers, built."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3, name="conv", kernel_regularizer=kernel_regularizer)(
        inputs
    )
    x = keras.layers.BatchNormalization(name="bn")(x)
    x = keras.layers.ReLU()(x)
    x = keras.layers.DepthwiseConv2D(3, name="depthwise")(x)
    x = keras.layers.SeparableConv2D(5, 3, name="separable")(x)
    x = keras.layers.Flatten()(x)
    outputs = keras.layers.Dense(3, name="dense")(x)
    return keras.Model(inputs, outputs, name="mixed")


MIXED_KEYS = [
    "conv/kernel",
    "depthwise/kernel",
    "separable/depthwise_kernel",
    "separable/pointwise_kernel",
    "dense/kernel",
]


@pytest.fixture
def model():
    return mixed_model()


def assert_sparsity(model, expected_zeros):
    """Asserts the exact number of zeros over the model's prunable kernels."""
    import hypersparse_tf

    weights = hypersparse_tf.prunable_weights(model)
    zeros = sum(int(np.sum(w.numpy() == 0)) for w in weights.values())
    assert zeros == expected_zeros
