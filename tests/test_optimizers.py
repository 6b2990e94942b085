import keras
import numpy as np
import pytest

import hypersparse_tf
from hypersparse_tf import optimizers
from tests.art_helpers import digits
from tests.art_helpers import mlp


def _torch_sgd(w, grads, rates, momentum, weight_decay):
    """PyTorch's SGD step by step in float64 (dampening 0, no Nesterov)."""
    w = w.astype(np.float64)
    buffer = None
    for g, lr in zip(grads, rates, strict=True):
        d = g + weight_decay * w
        buffer = d if buffer is None else momentum * buffer + d
        w = w - lr * buffer
    return w


def _keras_steps(optimizer, w0, grads, rates):
    w = keras.Variable(w0)
    optimizer.build([w])
    for g, lr in zip(grads, rates, strict=True):
        optimizer.learning_rate = lr
        optimizer.apply_gradients([(keras.ops.convert_to_tensor(g), w)])
    return np.asarray(w.numpy(), np.float64)


@pytest.mark.parametrize("momentum, weight_decay", [(0.9, 1e-2), (0.0, 1e-2), (0.9, 0)])
def test_coupled_sgd_is_pytorch_sgd(momentum, weight_decay):
    rng = np.random.default_rng(0)
    w0 = rng.normal(size=(5, 3)).astype(np.float32)
    grads = [rng.normal(size=(5, 3)).astype(np.float32) for _ in range(6)]
    rates = [0.1, 0.1, 0.1, 0.01, 0.01, 0.001]  # drops, as in fine-tuning
    optimizer = optimizers.CoupledSGD(0.1, momentum=momentum, weight_decay=weight_decay)
    got = _keras_steps(optimizer, w0, grads, rates)
    expected = _torch_sgd(w0, grads, rates, momentum, weight_decay)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


def test_keras_sgd_weight_decay_is_the_decoupled_form():
    # The decoupled form stays available as Keras' SGD, and differs: here
    # with no gradient at all, 20 steps at momentum 0.9.
    w0 = np.ones((4,), np.float32)
    grads = [np.zeros(4, np.float32)] * 20
    rates = [0.1] * 20
    coupled = _keras_steps(
        optimizers.CoupledSGD(0.1, momentum=0.9, weight_decay=1e-2), w0, grads, rates
    )
    decoupled = _keras_steps(
        keras.optimizers.SGD(0.1, momentum=0.9, weight_decay=1e-2), w0, grads, rates
    )
    np.testing.assert_allclose(
        coupled, _torch_sgd(w0, grads, rates, 0.9, 1e-2), rtol=1e-5
    )
    # Keras: w *= (1 - lr * wd) per step, outside the momentum.
    np.testing.assert_allclose(decoupled, (1 - 0.1 * 1e-2) ** 20, rtol=1e-5)
    shrink_coupled, shrink_decoupled = 1 - coupled[0], 1 - decoupled[0]
    assert shrink_coupled > 5 * shrink_decoupled


def _fit(optimizer, masks=None, seed=0):
    x, _, y, _ = digits()
    model = mlp(seed)
    model.compile(optimizer=optimizer, loss="sparse_categorical_crossentropy")
    if masks is not None:
        hypersparse_tf.fix_masks(model, masks)
    model.fit(x, y, epochs=2, batch_size=64, shuffle=False, verbose=0)
    return model


def test_coupled_sgd_without_decay_trains_as_keras_sgd(tmp_path):
    # At a constant learning rate both momentum forms give the same steps.
    keras_model = _fit(keras.optimizers.SGD(0.05, momentum=0.9))
    model = _fit(optimizers.CoupledSGD(0.05, momentum=0.9))
    for a, b in zip(model.get_weights(), keras_model.get_weights(), strict=True):
        np.testing.assert_allclose(a, b, atol=2e-5)
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras")
    config = loaded.optimizer.get_config()
    assert isinstance(loaded.optimizer, optimizers.CoupledSGD)
    assert (config["momentum"], config["weight_decay"]) == (0.9, 0.0)
    for a, b in zip(loaded.optimizer.variables, model.optimizer.variables, strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_coupled_sgd_keeps_fixed_masks():
    masks = hypersparse_tf.global_magnitude_masks(mlp(), 0.8)
    model = _fit(optimizers.CoupledSGD(0.05, momentum=0.9, weight_decay=1e-2), masks)
    for key, weight in hypersparse_tf.prunable_weights(model).items():
        assert np.all(weight.numpy()[~masks[key]] == 0), key
        assert np.all(weight.numpy()[masks[key]] != 0), key


@pytest.mark.parametrize(
    "kwargs, argument",
    [
        (dict(momentum=1.0), "momentum"),
        (dict(momentum=-0.1), "momentum"),
        (dict(weight_decay=-1e-4), "weight_decay"),
        (dict(weight_decay=True), "weight_decay"),
    ],
)
def test_coupled_sgd_bad_arguments(kwargs, argument):
    with pytest.raises(ValueError, match=f"argument `{argument}`"):
        optimizers.CoupledSGD(0.1, **kwargs)
