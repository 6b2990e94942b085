"""HyperSparse and the adaptive L1/L2 regularizers on the running Keras
backend: values and gradients against NumPy, exact statistics, and the
coefficient reaching the compiled train step.

Runs in every backend's own pytest process (`tests/run_backends.py`)."""

import keras
import numpy as np
import pytest

import hypersparse_tf
from hypersparse_tf import _keras_compat
from hypersparse_tf import backend_state
from hypersparse_tf import regularizers

INFLECTION = regularizers.INFLECTION


def _model(seed=0, units=(6, 5)):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((4,))
    x = keras.layers.Dense(units[0], activation="relu", name="a")(inputs)
    x = keras.layers.Dense(units[1], name="b")(x)
    return keras.Model(inputs, x)


def _sequential(seed=0):
    keras.utils.set_random_seed(seed)
    return keras.Sequential(
        [
            keras.Input((4,)),
            keras.layers.Dense(6, activation="relu", name="a"),
            keras.layers.Dense(5, name="b"),
        ]
    )


def _numpy_statistics(kernels, rate):
    flat = np.abs(np.concatenate([np.ravel(k) for k in kernels]).astype(np.float64))
    threshold = np.sort(flat.astype(np.float32))[int(np.floor(rate * flat.size))]
    scale = INFLECTION / np.float64(threshold)
    ratio = flat.sum() / np.tanh(scale * flat).sum()
    return float(threshold), scale, ratio


def _value_and_gradient(function, x):
    """`function(x)` and its gradient, with the backend's own autodiff."""
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        x = tf.constant(x)
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = function(x)
        return y, tape.gradient(y, x)
    if backend == "jax":
        import jax

        return jax.value_and_grad(function)(keras.ops.convert_to_tensor(x))
    if backend == "torch":
        import torch

        x = torch.tensor(x, requires_grad=True)
        y = function(x)
        y.backward()
        return y, x.grad
    pytest.skip(f"no autodiff on the {backend} backend")


def test_hypersparse_statistics_value_and_gradient_match_numpy():
    model = _model()
    reg = hypersparse_tf.HyperSparse(0.7, coefficient=0.3)
    kernels = hypersparse_tf.attach(model, reg)
    reg.update_statistics()
    values = [keras.ops.convert_to_numpy(k) for k in kernels]
    threshold, scale, ratio = _numpy_statistics(values, 0.7)
    assert float(keras.ops.convert_to_numpy(reg.threshold)) == threshold
    np.testing.assert_allclose(keras.ops.convert_to_numpy(reg.scale), scale, 1e-6)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(reg.ratio), ratio, 1e-5)
    x = values[0]
    loss, gradient = _value_and_gradient(reg, x)
    x64 = x.astype(np.float64)
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(loss),
        0.3 * ratio * np.tanh(scale * np.abs(x64)).sum(),
        rtol=1e-5,
    )
    expected = 0.3 * ratio * scale / np.cosh(scale * x64) ** 2 * np.sign(x64)
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(gradient), expected, rtol=1e-4, atol=1e-7
    )


@pytest.mark.parametrize(
    "regularizer, penalty",
    [
        (hypersparse_tf.AdaptiveL1, lambda x: np.abs(x).sum()),
        (hypersparse_tf.AdaptiveL2, lambda x: np.square(x).sum()),
    ],
    ids=["l1", "l2"],
)
def test_adaptive_penalties_match_numpy(regularizer, penalty):
    reg = regularizer(coefficient=0.25)
    x = np.random.default_rng(1).normal(size=(5, 3)).astype("float32")
    loss, gradient = _value_and_gradient(reg, x)
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(loss), 0.25 * penalty(x.astype(np.float64)), 1e-5
    )
    slope = np.sign(x) if regularizer is hypersparse_tf.AdaptiveL1 else 2 * x
    np.testing.assert_allclose(keras.ops.convert_to_numpy(gradient), 0.25 * slope, 1e-5)


def _frozen_weights_model(reg, build=_model):
    model = build()
    kernels = hypersparse_tf.attach(model, reg)
    model.compile(optimizer=keras.optimizers.SGD(0.0), loss="mse")
    return model, kernels


def _data():
    rng = np.random.default_rng(2)
    return rng.normal(size=(8, 4)).astype("float32"), np.zeros((8, 5), "float32")


@pytest.mark.parametrize(
    "make, total",
    [
        (lambda: hypersparse_tf.HyperSparse(0.5), lambda w: np.abs(w).sum()),
        (hypersparse_tf.AdaptiveL1, lambda w: np.abs(w).sum()),
        (hypersparse_tf.AdaptiveL2, lambda w: np.square(w).sum()),
    ],
    ids=["hypersparse", "l1", "l2"],
)
@pytest.mark.parametrize(
    "build", [_model, _sequential], ids=["functional", "sequential"]
)
def test_a_coefficient_change_reaches_the_next_compiled_step(make, total, build):
    reg = make()
    model, kernels = _frozen_weights_model(reg, build)
    reg.update_statistics()
    x, y = _data()
    first = float(model.train_on_batch(x, y))
    reg.coefficient.assign(0.5)
    second = float(model.train_on_batch(x, y))
    # Summed over all kernels the penalty is coefficient * A for HyperSparse
    # (ratio * sum tanh = A) and coefficient * sum|w| or sum w^2 otherwise.
    weights = np.concatenate(
        [np.ravel(keras.ops.convert_to_numpy(k)).astype(np.float64) for k in kernels]
    )
    np.testing.assert_allclose(second - first, 0.5 * total(weights), rtol=1e-4)


def test_a_coefficient_set_between_epochs_reaches_fit():
    reg = hypersparse_tf.AdaptiveL1()
    model, kernels = _frozen_weights_model(reg)
    x, y = _data()

    class Schedule(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            reg.coefficient.assign(0.1 * epoch)

    history = model.fit(x, y, batch_size=8, epochs=3, verbose=0, callbacks=[Schedule()])
    weights = np.concatenate(
        [np.ravel(keras.ops.convert_to_numpy(k)).astype(np.float64) for k in kernels]
    )
    losses = history.history["loss"]
    np.testing.assert_allclose(np.diff(losses), 0.1 * np.abs(weights).sum(), 1e-4)


def test_update_statistics_refuses_non_finite_kernels_and_keeps_the_statistics():
    model = _model()
    reg = hypersparse_tf.HyperSparse(0.5)
    kernels = hypersparse_tf.attach(model, reg)
    reg.update_statistics()
    before = float(keras.ops.convert_to_numpy(reg.threshold))
    value = keras.ops.convert_to_numpy(kernels[0]).copy()
    value[0, 0] = np.nan
    kernels[0].assign(value)
    with pytest.raises(regularizers.NonFiniteWeightsError, match="NaN or inf"):
        reg.update_statistics()
    assert float(keras.ops.convert_to_numpy(reg.threshold)) == before


def test_saved_model_loads_without_the_regularizer_state(tmp_path):
    reg = hypersparse_tf.HyperSparse(0.5, coefficient=0.2)
    model = _model()
    hypersparse_tf.attach(model, reg)
    path = str(tmp_path / "model.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    for old, new in zip(model.weights, loaded.weights, strict=False):
        np.testing.assert_array_equal(
            keras.ops.convert_to_numpy(old), keras.ops.convert_to_numpy(new)
        )
    assert len(loaded.weights) == 4  # two kernels, two biases
    assert isinstance(
        loaded.get_layer("a").kernel_regularizer, hypersparse_tf.HyperSparse
    )


def test_a_sequential_model_holds_the_state_outside_its_stack(tmp_path):
    reg = hypersparse_tf.HyperSparse(0.5)
    model = _sequential()
    hypersparse_tf.attach(model, reg)
    hypersparse_tf.attach(model, reg)  # again: still one holder
    x, _ = _data()
    # The stack, its layers' weights and the saved file are the model's own.
    assert [layer.name for layer in model.layers] == ["a", "b"]
    assert [len(layer.weights) for layer in model.layers] == [2, 2]
    state = {id(v) for v in reg.state_variables()}
    held = [v for v in model.non_trainable_variables if id(v) in state]
    holders = [
        layer
        for layer in _keras_compat.flatten_layers(model)
        if isinstance(layer, backend_state.StateHolder)
    ]
    if keras.backend.backend() == "tensorflow":  # its step reads any variable
        assert holders == []
    else:  # the others' steps take the model's state: the holder is in it
        assert len(holders) == 1 and len(held) == len(state)
    path = str(tmp_path / "model.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert len(loaded.weights) == 4
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(loaded(x)), keras.ops.convert_to_numpy(model(x))
    )
    assert isinstance(
        loaded.get_layer("a").kernel_regularizer, hypersparse_tf.HyperSparse
    )


def test_an_unbuilt_sequential_model_is_refused():
    model = keras.Sequential([keras.layers.Dense(3, name="d")])
    reg = hypersparse_tf.HyperSparse(0.5)
    with pytest.raises(ValueError, match="argument `model`.*not built"):
        hypersparse_tf.attach(model, reg)
    assert model.get_layer("d").kernel_regularizer is None  # nothing changed
