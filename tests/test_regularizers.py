import math

import keras
import numpy as np
import pytest
import tensorflow as tf

import hypersparse_tf
from hypersparse_tf.regularizers import INFLECTION
from tests.conftest import MIXED_KEYS
from tests.conftest import mixed_model


def _flat(kernels):
    return np.concatenate([np.ravel(k.numpy()) for k in kernels]).astype("float64")


def _reference_statistics(w, prune_rate):
    """Threshold, scale, A/T as the reference code computes them, in float64."""
    magnitudes = np.abs(w)
    threshold = np.sort(magnitudes)[math.floor(prune_rate * w.size)]
    scale = INFLECTION / threshold
    return threshold, scale, magnitudes.sum() / np.tanh(scale * magnitudes).sum()


def _reference_gradient(w, prune_rate, coefficient):
    _, scale, ratio = _reference_statistics(w, prune_rate)
    return coefficient * np.sign(w) * scale * ratio / np.cosh(scale * np.abs(w)) ** 2


def _loss_and_gradients(model, kernels):
    with tf.GradientTape() as tape:
        loss = tf.add_n(model.losses)
    return loss, tape.gradient(loss, kernels)


@pytest.mark.parametrize("prune_rate", [0.5, 0.9, 0.98])
def test_hypersparse_gradient_matches_reference(model, prune_rate):
    reg = hypersparse_tf.HyperSparse(prune_rate=prune_rate)
    kernels = hypersparse_tf.attach(model, reg)
    reg.coefficient.assign(0.01)
    reg.update_statistics()
    loss, grads = _loss_and_gradients(model, kernels)
    w = _flat(kernels)
    np.testing.assert_allclose(
        np.concatenate([np.ravel(g) for g in grads]),
        _reference_gradient(w, prune_rate, 0.01),
        rtol=2e-5,
        atol=1e-9,
    )
    # Summed over all kernels the loss is coefficient * A.
    np.testing.assert_allclose(loss.numpy(), 0.01 * np.abs(w).sum(), rtol=1e-5)


def test_hypersparse_statistics_match_reference(model):
    reg = hypersparse_tf.HyperSparse(prune_rate=0.9)
    kernels = hypersparse_tf.attach(model, reg)
    reg.update_statistics()
    threshold, scale, ratio = _reference_statistics(_flat(kernels), 0.9)
    assert reg.threshold.numpy() == np.float32(threshold)
    np.testing.assert_allclose(reg.scale.numpy(), scale, rtol=1e-6)
    np.testing.assert_allclose(reg.ratio.numpy(), ratio, rtol=1e-5)


def test_hypersparse_numerical_gradient():
    reg = hypersparse_tf.HyperSparse(prune_rate=0.5, coefficient=0.3)
    reg.scale.assign(2.5)
    reg.ratio.assign(1.7)
    x = tf.constant(np.random.default_rng(0).standard_normal((4, 5)), tf.float64)
    theoretical, numerical = tf.test.compute_gradient(reg, [x], delta=1e-6)
    np.testing.assert_allclose(theoretical[0], numerical[0], rtol=1e-6, atol=1e-8)
    # The state lives in float32 variables and is cast to the kernel's dtype.
    weight = np.float64(np.float32(0.3) * np.float32(1.7))
    expected = weight * np.tanh(2.5 * np.abs(x.numpy())).sum()
    np.testing.assert_allclose(reg(x).numpy(), expected, rtol=1e-12)


def test_hypersparse_threshold_exact_on_ties():
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(5, name="d")])
    values = np.tile(np.array([0.5, -0.25, 0.25, 1.0, -1.0], "float32"), (4, 1))
    model.get_layer("d").kernel.assign(values)
    reg = hypersparse_tf.HyperSparse(prune_rate=0.45)
    hypersparse_tf.attach(model, reg)
    reg.update_statistics()
    assert reg.threshold.numpy() == np.sort(np.abs(values).ravel())[9] == 0.5


def test_hypersparse_many_exact_zeros_is_safe():
    model = keras.Sequential([keras.Input((10,)), keras.layers.Dense(10, name="d")])
    values = np.zeros((10, 10), "float32")
    values[0, :5] = [0.1, -0.2, 0.3, 0.4, -0.5]
    model.get_layer("d").kernel.assign(values)
    reg = hypersparse_tf.HyperSparse(prune_rate=0.9, coefficient=1.0)
    kernels = hypersparse_tf.attach(model, reg)
    reg.update_statistics()
    assert reg.threshold.numpy() == 0.0
    assert reg.scale.numpy() == 0.0 and reg.ratio.numpy() == 0.0
    loss, grads = _loss_and_gradients(model, kernels)
    assert loss.numpy() == 0.0
    assert np.all(grads[0].numpy() == 0.0)


def test_hypersparse_exactly_kappa_zeros_uses_next_magnitude():
    model = keras.Sequential([keras.Input((10,)), keras.layers.Dense(10, name="d")])
    values = np.zeros((10, 10), "float32")
    values[0, :10] = np.linspace(0.1, 1.0, 10)
    model.get_layer("d").kernel.assign(values)
    reg = hypersparse_tf.HyperSparse(prune_rate=0.9, coefficient=1.0)
    kernels = hypersparse_tf.attach(model, reg)
    reg.update_statistics()
    np.testing.assert_allclose(reg.threshold.numpy(), 0.1)
    _, grads = _loss_and_gradients(model, kernels)
    expected = _reference_gradient(values.ravel().astype("float64"), 0.9, 1.0)
    # Far above the threshold sech^2 is tiny and float32 1 - tanh^2 (as in the
    # reference's PyTorch backward) keeps ~1e-7 of the largest gradient.
    np.testing.assert_allclose(
        grads[0].numpy().ravel(), expected, rtol=2e-5, atol=1e-6 * expected.max()
    )


def test_hypersparse_all_zero_weights_is_safe():
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(3, name="d")])
    model.get_layer("d").kernel.assign(np.zeros((3, 3), "float32"))
    reg = hypersparse_tf.HyperSparse(coefficient=1.0)
    kernels = hypersparse_tf.attach(model, reg)
    reg.update_statistics()
    loss, grads = _loss_and_gradients(model, kernels)
    assert loss.numpy() == 0.0 and np.all(np.isfinite(grads[0].numpy()))


def test_hypersparse_update_statistics_in_tf_function(model):
    reg = hypersparse_tf.HyperSparse(prune_rate=0.9)
    kernels = hypersparse_tf.attach(model, reg)
    tf.function(reg.update_statistics)()
    assert reg.threshold.numpy() == np.float32(
        _reference_statistics(_flat(kernels), 0.9)[0]
    )


def test_hypersparse_statistics_follow_the_weights(model):
    reg = hypersparse_tf.HyperSparse(prune_rate=0.9)
    kernels = hypersparse_tf.attach(model, reg)
    reg.update_statistics()
    kernels[0].assign(kernels[0].numpy() * 100.0)
    reg.update_statistics()
    expected = _reference_statistics(_flat(kernels), 0.9)
    np.testing.assert_allclose(reg.threshold.numpy(), expected[0], rtol=1e-7)


def test_hypersparse_before_attach():
    with pytest.raises(ValueError, match="attached to no kernel"):
        hypersparse_tf.HyperSparse().update_statistics()


def test_hypersparse_inactive_until_statistics(model):
    reg = hypersparse_tf.HyperSparse(coefficient=1.0)
    kernels = hypersparse_tf.attach(model, reg)
    loss, grads = _loss_and_gradients(model, kernels)
    assert loss.numpy() == 0.0


@pytest.mark.parametrize(
    "cls, penalty, gradient",
    [
        (hypersparse_tf.AdaptiveL1, np.abs, np.sign),
        (hypersparse_tf.AdaptiveL2, np.square, lambda w: 2 * w),
    ],
)
def test_adaptive_l1_l2_values_and_gradients(model, cls, penalty, gradient):
    reg = cls()
    kernels = hypersparse_tf.attach(model, reg)
    loss, _ = _loss_and_gradients(model, kernels)
    assert loss.numpy() == 0.0
    reg.coefficient.assign(0.05)
    reg.update_statistics()  # a no-op, part of the common interface
    loss, grads = _loss_and_gradients(model, kernels)
    w = _flat(kernels)
    np.testing.assert_allclose(loss.numpy(), 0.05 * penalty(w).sum(), rtol=1e-5)
    np.testing.assert_allclose(
        np.concatenate([np.ravel(g) for g in grads]),
        0.05 * gradient(w),
        rtol=1e-5,
        atol=1e-9,
    )


def test_regularizer_in_fit_changes_with_coefficient_without_retrace(model):
    reg = hypersparse_tf.AdaptiveL1()
    hypersparse_tf.attach(model, reg)
    model.compile(optimizer=keras.optimizers.SGD(0.0), loss="mse")
    x = np.ones((4, 8, 8, 3), "float32")
    y = np.zeros((4, 3), "float32")
    first = model.evaluate(x, y, verbose=0)
    reg.coefficient.assign(1.0)
    second = model.evaluate(x, y, verbose=0)
    total = sum(np.abs(k.numpy()).sum() for k in reg.kernels)
    np.testing.assert_allclose(second - first, total, rtol=1e-4)


def test_attach_returns_kernels_and_sets_layer_config(model):
    reg = hypersparse_tf.HyperSparse()
    kernels = hypersparse_tf.attach(model, reg)
    assert [k.path for k in kernels] == [
        "conv/kernel",
        "depthwise/kernel",
        "separable/depthwise_kernel",
        "separable/pointwise_kernel",
        "dense/kernel",
    ]
    assert reg.kernels == tuple(kernels)
    assert model.get_layer("conv").kernel_regularizer is reg
    assert model.get_layer("depthwise").depthwise_regularizer is reg
    assert model.get_layer("separable").pointwise_regularizer is reg
    assert all(w.regularizer is None for w in model.weights if "bias" in w.path)
    assert list(hypersparse_tf.attached_weights(model, reg)) == MIXED_KEYS


def test_attach_refuses_a_second_regularizer_and_changes_nothing():
    l2 = keras.regularizers.L2(1e-4)
    model = mixed_model(kernel_regularizer=l2)
    reg = hypersparse_tf.HyperSparse()
    with pytest.raises(ValueError, match="'conv/kernel' already has the regularizer"):
        hypersparse_tf.attach(model, reg)
    assert model.get_layer("conv").kernel.regularizer is l2
    assert model.get_layer("dense").kernel.regularizer is None
    assert reg.kernels == ()


def test_regularizer_given_at_construction():
    reg = hypersparse_tf.HyperSparse(prune_rate=0.8, coefficient=0.01)
    model = keras.Sequential(
        [
            keras.Input((6,)),
            keras.layers.Dense(5, name="a", kernel_regularizer=reg),
            keras.layers.Dense(4, name="b", kernel_regularizer=reg),
        ]
    )
    assert list(hypersparse_tf.attached_weights(model, reg)) == ["a/kernel", "b/kernel"]
    kernels = hypersparse_tf.attach(model, reg)  # same instance: accepted as is
    reg.update_statistics()
    _, grads = _loss_and_gradients(model, kernels)
    np.testing.assert_allclose(
        np.concatenate([np.ravel(g) for g in grads]),
        _reference_gradient(_flat(kernels), 0.8, 0.01),
        rtol=2e-5,
        atol=1e-9,
    )


def test_attach_rejects_other_objects(model):
    with pytest.raises(TypeError, match="`regularizer`"):
        hypersparse_tf.attach(model, keras.regularizers.L1(0.1))


@pytest.mark.parametrize(
    "prune_rate", [0, 0.0, 1, 1.0, -0.1, 1.5, float("nan"), "0.9", None, True]
)
def test_hypersparse_bad_prune_rate(prune_rate):
    with pytest.raises(ValueError, match="Invalid value for argument `prune_rate`"):
        hypersparse_tf.HyperSparse(prune_rate=prune_rate)


@pytest.mark.parametrize("coefficient", [-1e-6, float("inf"), float("nan"), "1"])
def test_bad_coefficient(coefficient):
    with pytest.raises(ValueError, match="Invalid value for argument `coefficient`"):
        hypersparse_tf.AdaptiveL1(coefficient=coefficient)


def test_prune_rate_accepts_numpy_floats():
    assert hypersparse_tf.HyperSparse(np.float32(0.5)).prune_rate == 0.5


@pytest.mark.parametrize(
    "reg",
    [
        hypersparse_tf.HyperSparse(prune_rate=0.95, coefficient=1e-5),
        hypersparse_tf.AdaptiveL1(coefficient=2e-5),
        hypersparse_tf.AdaptiveL2(coefficient=3e-5),
    ],
)
def test_get_config_round_trip(reg):
    config = reg.get_config()
    assert all(isinstance(v, (int, float, str)) for v in config.values())
    clone = type(reg).from_config(config)
    assert clone.get_config() == config
    serialized = keras.regularizers.serialize(reg)
    assert type(keras.regularizers.deserialize(serialized)) is type(reg)


def test_keras_file_round_trip_shares_one_regularizer(model, tmp_path):
    reg = hypersparse_tf.HyperSparse(prune_rate=0.85, coefficient=0.02)
    hypersparse_tf.attach(model, reg)
    path = str(tmp_path / "model.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    regularizers = {
        id(w.regularizer): w.regularizer
        for w in loaded.weights
        if w.regularizer is not None
    }
    assert len(regularizers) == 1
    loaded_reg = next(iter(regularizers.values()))
    assert isinstance(loaded_reg, hypersparse_tf.HyperSparse)
    assert loaded_reg.prune_rate == 0.85
    np.testing.assert_allclose(loaded_reg.coefficient.numpy(), 0.02)
    assert list(hypersparse_tf.attached_weights(loaded, loaded_reg)) == MIXED_KEYS
    kernels = hypersparse_tf.attach(loaded, loaded_reg)
    loaded_reg.update_statistics()
    _, grads = _loss_and_gradients(loaded, kernels)
    np.testing.assert_allclose(
        np.concatenate([np.ravel(g) for g in grads]),
        _reference_gradient(_flat(kernels), 0.85, 0.02),
        rtol=2e-5,
        atol=1e-9,
    )


def test_attach_after_fit_reaches_the_traced_step():
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [keras.Input((6,)), keras.layers.Dense(5, name="a"), keras.layers.Dense(2)]
    )
    model.compile(optimizer=keras.optimizers.SGD(0.0), loss="mse")
    x = np.ones((4, 6), "float32")
    y = np.zeros((4, 2), "float32")
    model.fit(x, y, epochs=1, verbose=0)  # traces a train step without losses
    plain = model.train_on_batch(x, y)
    assert model.evaluate(x, y, verbose=0) == pytest.approx(plain, rel=1e-6)
    reg = hypersparse_tf.AdaptiveL1(coefficient=1.0)
    hypersparse_tf.attach(model, reg)
    total = sum(np.abs(k.numpy()).sum() for k in reg.kernels)
    np.testing.assert_allclose(model.train_on_batch(x, y) - plain, total, rtol=1e-5)
    np.testing.assert_allclose(
        model.evaluate(x, y, verbose=0) - plain, total, rtol=1e-5
    )
