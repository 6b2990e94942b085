"""The models and structured HyperSparse on the running backend."""

import keras
import numpy as np
import pytest

import hypersparse_tf
from hypersparse_tf import models


@pytest.mark.parametrize(
    "build, shape",
    [
        (lambda: models.lenet_300_100(input_shape=(8, 8, 1)), (8, 8, 1)),
        (lambda: models.small_cnn(input_shape=(8, 8, 1)), (8, 8, 1)),
        (lambda: models.mobilenet_style(input_shape=(16, 16, 3), width=4), (16, 16, 3)),
        (lambda: models.resnet(8, input_shape=(16, 16, 3), width=4), (16, 16, 3)),
    ],
    ids=["lenet_300_100", "small_cnn", "mobilenet_style", "resnet8"],
)
def test_models_train_a_step_with_hypersparse(build, shape):
    model = build()
    reg = hypersparse_tf.HyperSparse(0.8, coefficient=1e-3)
    hypersparse_tf.attach(model, reg)
    reg.update_statistics()
    model.compile(
        optimizer="sgd",
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    rng = np.random.default_rng(0)
    x = rng.normal(size=(4, *shape)).astype("float32")
    loss = float(model.train_on_batch(x, np.arange(4) % 10))
    assert np.isfinite(loss)
    assert model.output_shape == (None, 10)


def test_channel_structure_statistics_and_masks_on_this_backend():
    model = models.mobilenet_style(input_shape=(16, 16, 3), width=4)
    reg = hypersparse_tf.HyperSparse(0.5, structure="channel")
    kernels = hypersparse_tf.attach(model, reg)
    reg.update_statistics()
    values = [keras.ops.convert_to_numpy(k) for k in kernels]
    sums = reg.grouping.group_sums_of_squares(values)
    magnitudes = reg.grouping.magnitudes(sums)
    k = int(np.floor(0.5 * reg.grouping.num_groups))
    expected = np.sort(magnitudes.astype(np.float32))[k]
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(reg.threshold), expected, rtol=1e-6
    )
    masks = hypersparse_tf.global_magnitude_masks(model, 0.5, structure="channel")
    hypersparse_tf.apply_masks(model, masks)
    small = hypersparse_tf.shrink(model)
    assert small.count_params() < model.count_params()


def _conv_chain(sequential):
    keras.utils.set_random_seed(0)
    layers = [
        keras.layers.Conv2D(6, 3, padding="same", activation="relu", name="c1"),
        keras.layers.Conv2D(5, 3, padding="same", activation="relu", name="c2"),
        keras.layers.GlobalAveragePooling2D(),
        keras.layers.Dense(4, name="d"),
    ]
    if sequential:
        return keras.Sequential([keras.Input((8, 8, 3)), *layers])
    x = inputs = keras.Input((8, 8, 3))
    for layer in layers:
        x = layer(x)
    return keras.Model(inputs, x)


@pytest.mark.parametrize("structure", ["channel", "block"])
@pytest.mark.parametrize("sequential", [False, True], ids=["functional", "sequential"])
def test_structured_hypersparse_reaches_the_compiled_step(structure, sequential):
    """Inside JAX's traced step Keras hands a regularizer the kernel's traced
    value, not the variable: the structured loss must still find its kernel's
    groups. With frozen weights, the loss a coefficient of 0.5 adds is 0.5 * A,
    A the sum of the group magnitudes (each group lies in one kernel here)."""
    model = _conv_chain(sequential)
    block = {"block_shape": (1, 2)} if structure == "block" else {}
    reg = hypersparse_tf.HyperSparse(0.5, structure=structure, **block)
    kernels = hypersparse_tf.attach(model, reg)
    model.compile(
        optimizer=keras.optimizers.SGD(0.0),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    reg.update_statistics()
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(8, 8, 8, 3)).astype("float32"), np.arange(8) % 4
    first = float(model.train_on_batch(x, y))
    reg.coefficient.assign(0.5)
    second = float(model.train_on_batch(x, y))
    values = [keras.ops.convert_to_numpy(k).astype(np.float64) for k in kernels]
    magnitudes = reg.grouping.magnitudes(reg.grouping.group_sums_of_squares(values))
    np.testing.assert_allclose(second - first, 0.5 * magnitudes.sum(), rtol=1e-4)


def test_art_with_channel_hypersparse_masks_whole_channels_and_shrinks():
    keras.utils.set_random_seed(0)
    model = models.mobilenet_style(input_shape=(16, 16, 3), width=4)
    model.compile(
        optimizer=keras.optimizers.SGD(0.05, momentum=0.9),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    reg = hypersparse_tf.HyperSparse(0.5, structure="channel")
    hypersparse_tf.attach(model, reg)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(128, 16, 16, 3)).astype("float32")
    y = (x[:, :8].mean((1, 2, 3)) > 0).astype("int32")
    art = hypersparse_tf.ART(
        reg,
        (x, y),
        warmup_epochs=2,
        lambda_init=1e-3,
        eta=2.0,
        finetune_epochs=2,
        epoch_budget=10,
        verbose=0,
    )
    model.fit(x, y, epochs=20, batch_size=32, verbose=0, callbacks=[art])
    assert art.phase == "done"
    # Every masked entry (kernels, and the removed channels' biases and
    # BatchNorm parameters) is still exactly 0 after fine-tuning.
    weights = {w.path: w for w in model.weights}
    masked = [key for key in art.masks if key in weights]
    assert len(masked) == len(art.masks)
    for key in masked:
        value = keras.ops.convert_to_numpy(weights[key])
        assert np.all(value[~art.masks[key]] == 0), key
    small = hypersparse_tf.shrink(model)
    assert small.count_params() < 0.5 * model.count_params()
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(small(x[:8])),
        keras.ops.convert_to_numpy(model(x[:8])),
        atol=1e-5,
    )
