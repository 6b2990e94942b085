import keras
import pytest

import hypersparse_tf
from tests.conftest import MIXED_KEYS
from tests.conftest import mixed_model


def test_prunable_weights_mixed_model(model):
    weights = hypersparse_tf.prunable_weights(model)
    assert list(weights) == MIXED_KEYS
    assert weights["dense/kernel"].shape == (20, 3)


def test_prunable_weights_every_layer_kind():
    inputs = keras.Input((6, 6, 6, 2))
    x = keras.layers.Conv3D(2, 1, name="c3")(inputs)
    x = keras.layers.Conv3DTranspose(2, 1, name="c3t")(x)
    x = keras.layers.Reshape((36, 12))(x)
    x = keras.layers.Conv1D(3, 1, name="c1")(x)
    x = keras.layers.Conv1DTranspose(3, 1, name="c1t")(x)
    x = keras.layers.DepthwiseConv1D(1, name="dw1")(x)
    x = keras.layers.SeparableConv1D(3, 1, name="sep1")(x)
    x = keras.layers.Reshape((6, 6, 3))(x)
    x = keras.layers.Conv2DTranspose(2, 1, name="c2t")(x)
    x = keras.layers.LayerNormalization(name="ln")(x)
    x = keras.layers.Flatten()(x)
    x = keras.layers.EinsumDense("ab,bc->ac", output_shape=4, name="einsum")(x)
    outputs = keras.layers.Embedding(4, 2, name="embedding")(keras.ops.cast(x, "int32"))
    model = keras.Model(inputs, outputs)
    assert list(hypersparse_tf.prunable_weights(model)) == [
        "c3/kernel",
        "c3t/kernel",
        "c1/kernel",
        "c1t/kernel",
        "dw1/kernel",
        "sep1/depthwise_kernel",
        "sep1/pointwise_kernel",
        "c2t/kernel",
        "einsum/kernel",
    ]


def test_prunable_weights_nested_and_shared_layers():
    shared = keras.layers.Dense(4, name="shared")
    inner = keras.Sequential(
        [keras.Input((4,)), keras.layers.Dense(4, name="inner_dense")], name="inner"
    )
    inputs = keras.Input((4,))
    x = shared(inputs)
    x = shared(x)
    x = inner(x)
    model = keras.Model(inputs, keras.layers.Dense(2, name="head")(x))
    weights = hypersparse_tf.prunable_weights(model)
    assert list(weights) == ["shared/kernel", "inner_dense/kernel", "head/kernel"]


def test_prunable_weights_predicate_narrows_and_widens(model):
    narrowed = hypersparse_tf.prunable_weights(
        model,
        lambda layer, w: (
            hypersparse_tf.is_prunable_kernel(layer, w) and layer.name != "dense"
        ),
    )
    assert list(narrowed) == MIXED_KEYS[:-1]
    widened = hypersparse_tf.prunable_weights(
        model,
        lambda layer, w: (
            hypersparse_tf.is_prunable_kernel(layer, w) or w.name == "bias"
        ),
    )
    assert "dense/bias" in widened and "conv/bias" in widened
    assert "bn/gamma" not in widened


def test_prunable_weights_unbuilt_model():
    model = keras.Sequential([keras.layers.Dense(2)])
    with pytest.raises(ValueError, match="not built"):
        hypersparse_tf.prunable_weights(model)


def test_prunable_weights_no_prunable_kernel():
    model = keras.Sequential([keras.Input((3,)), keras.layers.BatchNormalization()])
    with pytest.raises(ValueError, match="no prunable weight"):
        hypersparse_tf.prunable_weights(model)


def test_prunable_weights_not_a_model():
    with pytest.raises(TypeError, match="argument `model`"):
        hypersparse_tf.prunable_weights("model.keras")


def test_prunable_weights_bad_predicate(model):
    with pytest.raises(TypeError, match="`predicate`"):
        hypersparse_tf.prunable_weights(model, predicate=3)


def test_importing_the_package_imports_neither_tfmot_nor_tf_keras():
    import os
    import subprocess
    import sys

    # An earlier test's tfmot import sets TF_USE_LEGACY_KERAS in this process.
    env = {k: v for k, v in os.environ.items() if k != "TF_USE_LEGACY_KERAS"}
    code = (
        "import sys, hypersparse_tf; "
        "print(any(m.startswith(('tensorflow_model_optimization', 'tf_keras')) "
        "for m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env=env,
    )
    assert out.stdout.strip() == "False"


def test_mixed_model_helper_is_deterministic():
    a = hypersparse_tf.prunable_weights(mixed_model(seed=3))
    b = hypersparse_tf.prunable_weights(mixed_model(seed=3))
    for key in a:
        assert (a[key].numpy() == b[key].numpy()).all()
