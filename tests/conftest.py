"""Shared fixtures: tiny models of every prunable layer kind."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

TF_KERAS_MISSING = 'tf_keras not installed: pip install "hypersparse_tf[tfmot]"'


def copy_weights_by_layer_name(source, target):
    """Copies every layer's weights from `source` to the layer of the same name
    in `target` (the two may be of different Keras flavours)."""
    for layer in source.layers:
        if layer.weights:
            target.get_layer(layer.name).set_weights(layer.get_weights())
    return target


def twin(build, seed, module):
    """`build(module)` with the weights of `build(keras)` for `seed`: the
    Keras 3 model itself, or its tf_keras twin with the same numbers."""
    keras.utils.set_random_seed(seed)
    model = build(keras)
    if module is keras:
        return model
    return copy_weights_by_layer_name(model, build(module))


def mixed_model(seed=0, kernel_regularizer=None, module=keras):
    """Conv, BatchNorm, depthwise, separable and dense layers, built; in Keras
    3 or, with `module=tf_keras`, its tf_keras twin with the same weights."""

    def build(k):
        inputs = k.Input((8, 8, 3))
        regularizer = kernel_regularizer if k is module else None
        x = k.layers.Conv2D(4, 3, name="conv", kernel_regularizer=regularizer)(inputs)
        x = k.layers.BatchNormalization(name="bn")(x)
        x = k.layers.ReLU()(x)
        x = k.layers.DepthwiseConv2D(3, name="depthwise")(x)
        x = k.layers.SeparableConv2D(5, 3, name="separable")(x)
        x = k.layers.Flatten()(x)
        outputs = k.layers.Dense(3, name="dense")(x)
        return k.Model(inputs, outputs, name="mixed")

    return twin(build, seed, module)


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
    zeros = sum(
        int(np.sum(keras.ops.convert_to_numpy(w) == 0)) for w in weights.values()
    )
    assert zeros == expected_zeros
