"""Tests of `model_cost` and the MACs of `inspect_tflite`: counts by hand."""

import keras
import pytest

import hypersparse_tf
from hypersparse_tf import models


def _mobilenet_macs():
    """MACs of `mobilenet_style()` on 32x32x3, layer by layer."""
    total = 16 * 16 * 27 * 16  # stem, 3x3x3 -> 16 at 16x16
    size, channels = 16, 16
    for multiple, stride in ((2, 1), (4, 2), (4, 1), (8, 2), (8, 1)):
        size //= stride
        total += size * size * 9 * channels  # depthwise 3x3
        total += size * size * channels * 16 * multiple  # pointwise 1x1
        channels = 16 * multiple
    return total + channels * 10


@pytest.mark.parametrize(
    "build, expected",
    [
        (models.lenet_300_100, 784 * 300 + 300 * 100 + 100 * 10),
        (
            models.small_cnn,
            28 * 28 * 9 * 16 + 14 * 14 * 9 * 16 * 32 + 7 * 7 * 32 * 10,
        ),
        (models.mobilenet_style, _mobilenet_macs()),
    ],
    ids=["lenet_300_100", "small_cnn", "mobilenet_style"],
)
def test_model_cost_counts_the_macs_by_hand(build, expected):
    model = build()
    cost = hypersparse_tf.model_cost(model)
    assert cost["macs"] == expected
    assert cost["parameters"] == model.count_params()
    assert sum(cost["layers"].values()) == expected


def test_mobilenet_macs_by_hand_is_the_documented_number():
    assert _mobilenet_macs() == 1_149_184


def test_model_cost_of_every_convolution_kind():
    inputs = keras.Input((10, 4))
    x = keras.layers.Conv1D(6, 3, name="conv1d")(inputs)  # 8 positions
    x = keras.layers.SeparableConv1D(5, 3, depth_multiplier=2, name="sep")(x)
    x = keras.layers.DepthwiseConv1D(3, depth_multiplier=2, name="dw")(x)
    x = keras.layers.Conv1DTranspose(3, 2, strides=2, name="transpose")(x)
    x = keras.layers.Conv1D(4, 3, groups=1, padding="same", name="same")(x)
    model = keras.Model(inputs, x)
    layers = hypersparse_tf.model_cost(model)["layers"]
    assert layers == {
        "conv1d": 8 * 3 * 4 * 6,
        "sep": 6 * (6 * 2 * 3 + 6 * 2 * 5),  # depthwise + pointwise, 6 positions
        "dw": 4 * 3 * 5 * 2,
        "transpose": 4 * 2 * 10 * 3,  # per input position
        "same": 8 * 3 * 3 * 4,
    }


@pytest.mark.parametrize(
    "build",
    [models.lenet_300_100, models.small_cnn, models.mobilenet_style],
    ids=["lenet_300_100", "small_cnn", "mobilenet_style"],
)
def test_inspect_tflite_counts_the_same_macs(build):
    pytest.importorskip("tensorflow")
    from hypersparse_tf import export

    model = build()
    tflite = export.to_tflite(model, "mobile")
    assert (
        export.inspect_tflite(tflite)["macs"]
        == hypersparse_tf.model_cost(model)["macs"]
    )


def test_model_cost_rejects_a_subclassed_model():
    class Net(keras.Model):
        def call(self, x):
            return x

    with pytest.raises(TypeError, match="argument `model`"):
        hypersparse_tf.model_cost(Net())


def test_inspect_tflite_counts_stored_parameters():
    pytest.importorskip("tensorflow")
    from hypersparse_tf import export

    model = models.lenet_300_100()
    for layer in model.layers:  # non-zero biases (zeros may not be stored)
        if layer.weights:
            layer.bias.assign(layer.bias.numpy() + 0.1)
    info = export.inspect_tflite(export.to_tflite(model, "mobile"))
    assert info["parameters"] == model.count_params() == 266_610
    assert info["nonzero_parameters"] <= info["parameters"]


def test_micro_latency_times_each_model():
    pytest.importorskip("tflite_micro", reason="needs tflite-micro")
    import numpy as np

    from hypersparse_tf import export

    x = np.random.default_rng(0).random((16, 8, 8, 1)).astype("float32")
    small = export.to_tflite(models.small_cnn(input_shape=(8, 8, 1)), "micro", x)
    seconds = export.micro_latency({"a": small, "b": small}, num_runs=3)
    assert list(seconds) == ["a", "b"]
    assert all(0 < value < 1 for value in seconds.values())
    with pytest.raises(ValueError, match="argument `num_runs`"):
        export.micro_latency({"a": small}, num_runs=0)
