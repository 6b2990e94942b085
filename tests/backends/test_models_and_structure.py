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
