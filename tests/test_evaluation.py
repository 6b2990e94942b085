import keras
import numpy as np
import pytest
import tensorflow as tf

import hypersparse_tf
from hypersparse_tf import evaluation
from tests.art_helpers import bn_mlp
from tests.art_helpers import compiled
from tests.art_helpers import digits
from tests.art_helpers import mlp


def _trainedbn_mlp():
    model = bn_mlp()
    x_train, _, y_train, _ = digits()
    model.fit(x_train, y_train, epochs=2, batch_size=64, verbose=0)
    return model, x_train, y_train


def _numpy_pruned_accuracy(model, masks, x, y, samples):
    """The pruned network in float64; BatchNorm statistics either the model's
    or the biased moments of its input on the first `samples`."""
    d1, out, bn = (model.get_layer(n) for n in ("d1", "out", "bn"))
    w1 = np.where(masks["d1/kernel"], d1.kernel.numpy(), 0).astype(np.float64)
    w2 = np.where(masks["out/kernel"], out.kernel.numpy(), 0).astype(np.float64)
    h = x.astype(np.float64) @ w1 + d1.bias.numpy()
    mean, var = bn.moving_mean.numpy(), bn.moving_variance.numpy()
    if samples:
        mean, var = h[:samples].mean(axis=0), h[:samples].var(axis=0)
    h = (h - mean) / np.sqrt(var + bn.epsilon) * bn.gamma.numpy() + bn.beta.numpy()
    logits = np.maximum(h, 0) @ w2 + out.bias.numpy()
    return np.mean(np.argmax(logits, axis=-1) == y)


@pytest.mark.parametrize("samples", [0, 200])
def test_pruned_accuracy_matches_numpy_and_leaves_the_model_unchanged(samples):
    model, x_train, y_train = _trainedbn_mlp()
    before = [w.copy() for w in model.get_weights()]
    masks = hypersparse_tf.global_magnitude_masks(model, 0.9)
    accuracy = hypersparse_tf.pruned_accuracy(
        model, masks, (x_train, y_train), recalibrate_batchnorm=samples
    )
    for a, b in zip(model.get_weights(), before, strict=True):
        np.testing.assert_array_equal(a, b)  # statistics and kernels put back
    expected = _numpy_pruned_accuracy(model, masks, x_train, y_train, samples)
    assert accuracy == pytest.approx(expected, abs=2 / len(y_train))
    if samples:  # re-estimated statistics change the score here
        stale = hypersparse_tf.pruned_accuracy(model, masks, (x_train, y_train))
        assert abs(stale - accuracy) > 0.05


def test_pruned_accuracy_of_all_ones_masks_is_the_dense_accuracy():
    model, x_train, y_train = _trainedbn_mlp()
    masks = {
        key: np.ones(w.shape, bool)
        for key, w in hypersparse_tf.prunable_weights(model).items()
    }
    one_hot = keras.utils.to_categorical(y_train, 10)
    batches = tf.data.Dataset.from_tensor_slices((x_train, one_hot)).batch(100)
    accuracy = hypersparse_tf.pruned_accuracy(model, masks, batches)
    predicted = np.argmax(model.predict(x_train, verbose=0), axis=-1)
    assert accuracy == np.mean(predicted == y_train)


def test_recalibrate_batchnorm_sets_the_moments_and_returns_the_old_ones():
    model, x_train, _ = _trainedbn_mlp()
    bn, d1 = model.get_layer("bn"), model.get_layer("d1")
    old_mean = bn.moving_mean.numpy().copy()
    saved = hypersparse_tf.recalibrate_batchnorm(model, x_train[:300])
    h = x_train[:300].astype(np.float64) @ d1.kernel.numpy() + d1.bias.numpy()
    np.testing.assert_allclose(bn.moving_mean.numpy(), h.mean(axis=0), atol=1e-5)
    np.testing.assert_allclose(
        bn.moving_variance.numpy(), h.var(axis=0), rtol=1e-4, atol=1e-6
    )
    assert bn.momentum == 0.99  # put back
    assert [v is bn.moving_mean for v, _ in saved] == [True, False]
    np.testing.assert_array_equal(saved[0][1], old_mean)
    assert hypersparse_tf.recalibrate_batchnorm(compiled(mlp()), x_train) == []


def test_pruned_accuracy_bad_input_changes_nothing():
    model, x_train, y_train = _trainedbn_mlp()
    before = [w.copy() for w in model.get_weights()]
    masks = hypersparse_tf.global_magnitude_masks(model, 0.9)
    bad = dict(masks, **{"d1/kernel": masks["d1/kernel"][:3]})
    with pytest.raises(ValueError, match="mask of 'd1/kernel' has shape"):
        hypersparse_tf.pruned_accuracy(model, bad, (x_train, y_train))
    with pytest.raises(ValueError, match="argument `eval_data`"):
        hypersparse_tf.pruned_accuracy(model, masks, (x_train, y_train[:3]))
    with pytest.raises(ValueError, match="argument `recalibrate_batchnorm`"):
        hypersparse_tf.pruned_accuracy(
            model, masks, (x_train, y_train), recalibrate_batchnorm=-1
        )
    for a, b in zip(model.get_weights(), before, strict=True):
        np.testing.assert_array_equal(a, b)


def test_training_accuracy_found_among_compiled_metrics_or_named():
    model = compiled(mlp(), metrics=[keras.metrics.SparseCategoricalAccuracy()])
    assert evaluation.TrainingAccuracy(model).key == "sparse_categorical_accuracy"
    reader = evaluation.TrainingAccuracy(model, "top1")
    assert reader.read({"top1": 0.25, "loss": 1.0}) == 0.25
    with pytest.raises(KeyError, match="'top1'.*holds only \\['loss'\\]"):
        reader.read({"loss": 1.0})
    with pytest.raises(ValueError, match="no accuracy metric"):
        evaluation.TrainingAccuracy(compiled(mlp(), metrics=()))
