"""Tests of `shrink`: removed units, exact parameter counts, unchanged outputs."""

import keras
import numpy as np
import pytest

import hypersparse_tf
from hypersparse_tf.shrink import shrink


def _outputs(model, x):
    return keras.ops.convert_to_numpy(model(x, training=False))


def _assert_same_outputs(old, new, x):
    reference = _outputs(old, x)
    result = _outputs(new, x)
    assert result.shape == reference.shape
    # shrink's own bound: 1e-5 of the output scale (float32 sums reordered).
    scale = max(1.0, float(np.max(np.abs(reference))))
    assert np.max(np.abs(result - reference)) < 1e-5 * scale


def _normal_weights(model, seed=0):
    """Weights of one scale everywhere, so global pruning hits every layer."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            gamma, beta, mean, variance = layer.get_weights()
            layer.set_weights(
                [
                    rng.uniform(0.5, 1.5, gamma.shape),
                    rng.normal(0.0, 0.5, beta.shape),
                    rng.normal(0.0, 0.5, mean.shape),
                    rng.uniform(0.5, 1.5, variance.shape),
                ]
            )
        elif layer.weights:
            layer.set_weights(
                [rng.normal(0.0, 0.5, w.shape) for w in layer.get_weights()]
            )


def _prune(model, rate):
    hypersparse_tf.apply_masks(
        model, hypersparse_tf.global_magnitude_masks(model, rate)
    )


def _mlp(use_bias=True):
    keras.utils.set_random_seed(0)
    return keras.Sequential(
        [
            keras.Input((6,)),
            keras.layers.Dense(5, activation="relu", name="hidden"),
            keras.layers.Dense(3, use_bias=use_bias, name="out"),
        ],
        name="mlp",
    )


def _kill_units(model):
    """Hidden unit 1 outputs relu(-0.5) = 0, unit 2 the constant relu(0.7),
    unit 3 is read by nobody; units 0 and 4 carry the signal."""
    kernel, bias = model.get_layer("hidden").get_weights()
    kernel[:, 1] = 0.0
    kernel[:, 2] = 0.0
    bias[:] = 0.1
    bias[1], bias[2] = -0.5, 0.7
    model.get_layer("hidden").set_weights([kernel, bias])
    out = model.get_layer("out")
    weights = out.get_weights()
    weights[0][3, :] = 0.0
    out.set_weights(weights)


def test_shrink_removes_dead_units_of_hand_made_mlp():
    model = _mlp()
    _kill_units(model)
    x = np.random.default_rng(1).normal(size=(16, 6)).astype("float32")
    small = shrink(model)
    assert isinstance(small, keras.Sequential)
    assert small.get_layer("hidden").units == 2
    assert small.get_layer("out").get_weights()[0].shape == (2, 3)
    assert small.count_params() == 6 * 2 + 2 + 2 * 3 + 3
    kernel = model.get_layer("hidden").get_weights()[0]
    np.testing.assert_array_equal(
        small.get_layer("hidden").get_weights()[0], kernel[:, [0, 4]]
    )
    out_kernel, out_bias = model.get_layer("out").get_weights()
    np.testing.assert_allclose(
        small.get_layer("out").get_weights()[1], out_bias + 0.7 * out_kernel[2], 1e-6
    )
    _assert_same_outputs(model, small, x)


def test_shrink_adds_bias_to_absorb_a_constant():
    model = _mlp(use_bias=False)
    _kill_units(model)
    small = shrink(model)
    out = small.get_layer("out")
    assert out.use_bias
    out_kernel = model.get_layer("out").get_weights()[0]
    np.testing.assert_allclose(out.get_weights()[1], 0.7 * out_kernel[2], 1e-6)
    assert small.get_layer("hidden").units == 2
    x = np.random.default_rng(2).normal(size=(16, 6)).astype("float32")
    _assert_same_outputs(model, small, x)


def test_shrink_without_dead_units_keeps_every_unit():
    model = _mlp()
    small = shrink(model)
    assert small is not model
    assert small.count_params() == model.count_params()
    x = np.random.default_rng(3).normal(size=(8, 6)).astype("float32")
    np.testing.assert_array_equal(_outputs(small, x), _outputs(model, x))


def test_shrink_keeps_one_unit_when_all_are_dead():
    model = _mlp()
    kernel, bias = model.get_layer("hidden").get_weights()
    model.get_layer("hidden").set_weights([kernel * 0.0, bias * 0.0 - 1.0])
    small = shrink(model)
    assert small.get_layer("hidden").units == 1
    x = np.random.default_rng(4).normal(size=(8, 6)).astype("float32")
    _assert_same_outputs(model, small, x)


def test_shrink_does_not_change_the_input_model():
    model = _mlp()
    _kill_units(model)
    before = [w.copy() for w in model.get_weights()]
    shrink(model)
    assert model.get_layer("hidden").units == 5
    for old, new in zip(before, model.get_weights(), strict=True):
        np.testing.assert_array_equal(old, new)


def _conv_model(padding):
    """conv1 channel 0 carries the constant relu(0.5 * 1 + 0.2) = 0.7."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((6, 6, 2))
    x = keras.layers.Conv2D(3, 3, padding="same", use_bias=False, name="conv1")(inputs)
    x = keras.layers.BatchNormalization(name="bn")(x)
    x = keras.layers.ReLU()(x)
    x = keras.layers.Conv2D(4, 3, padding=padding, name="conv2")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(2, name="out")(x)
    model = keras.Model(inputs, outputs)
    conv1 = model.get_layer("conv1")
    kernel = conv1.get_weights()[0]
    kernel[..., 0] = 0.0
    conv1.set_weights([kernel])
    model.get_layer("bn").set_weights(
        [
            np.full(3, 0.5, "float32"),
            np.full(3, 0.2, "float32"),
            np.full(3, -1.0, "float32"),
            np.full(3, 1.0 - 1e-3, "float32"),
        ]
    )
    return model


@pytest.mark.parametrize("padding, filters", [("valid", 2), ("same", 3)])
def test_shrink_folds_a_constant_channel_only_where_exact(padding, filters):
    model = _conv_model(padding)
    small = shrink(model)
    assert small.get_layer("conv1").filters == filters
    assert small.get_layer("bn").get_weights()[0].shape == (filters,)
    assert small.get_layer("conv2").get_weights()[0].shape == (3, 3, filters, 4)
    x = np.random.default_rng(5).normal(size=(4, 6, 6, 2)).astype("float32")
    _assert_same_outputs(model, small, x)


def test_shrink_keeps_channels_next_to_unknown_layers():
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((6,)),
            keras.layers.Dense(5, activation="relu", name="hidden"),
            keras.layers.LayerNormalization(name="norm"),
            keras.layers.Dense(3, name="out"),
        ]
    )
    _kill_units(model)
    small = shrink(model)
    assert small.get_layer("hidden").units == 5
    assert small.count_params() == model.count_params()


def test_shrink_keeps_the_output_units_of_a_softmax_layer():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((4,))
    hidden = keras.layers.Dense(6, activation="softmax", name="hidden")(inputs)
    outputs = keras.layers.Dense(2, name="out")(hidden)
    model = keras.Model(inputs, outputs)
    kernel, bias = model.get_layer("hidden").get_weights()
    kernel[:, :3] = 0.0
    model.get_layer("hidden").set_weights([kernel, bias])
    assert shrink(model).get_layer("hidden").units == 6


def _cnn():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 1))
    x = inputs
    for index, filters in enumerate((6, 8), start=1):
        x = keras.layers.Conv2D(
            filters, 3, padding="same", use_bias=False, name=f"conv{index}"
        )(x)
        x = keras.layers.BatchNormalization(name=f"bn{index}")(x)
        x = keras.layers.ReLU()(x)
        x = keras.layers.MaxPooling2D(2)(x)
    x = keras.layers.Flatten()(x)
    x = keras.layers.Dense(12, activation="relu", name="dense")(x)
    x = keras.layers.Dropout(0.5)(x)
    outputs = keras.layers.Dense(4, name="out")(x)
    return keras.Model(inputs, outputs, name="cnn")


def _residual():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((6, 6, 2))
    x = keras.layers.Conv2D(6, 3, padding="same", name="stem")(inputs)
    x = keras.layers.BatchNormalization(name="stem_bn")(x)
    x = keras.layers.ReLU()(x)
    for block in range(2):
        y = keras.layers.Conv2D(6, 3, padding="same", name=f"b{block}_conv1")(x)
        y = keras.layers.BatchNormalization(name=f"b{block}_bn1")(y)
        y = keras.layers.ReLU()(y)
        y = keras.layers.Conv2D(6, 1, name=f"b{block}_conv2")(y)
        x = keras.layers.Add()([x, y])
        x = keras.layers.ReLU()(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(3, name="out")(x)
    return keras.Model(inputs, outputs, name="residual")


def _sequential():
    keras.utils.set_random_seed(0)
    return keras.Sequential(
        [
            keras.Input((5, 5, 2)),
            keras.layers.Conv2D(8, 3, activation="relu", name="conv"),
            keras.layers.Flatten(),
            keras.layers.Dense(16, activation="relu", name="dense1"),
            keras.layers.Dense(16, activation="tanh", name="dense2"),
            keras.layers.Dense(3, name="out"),
        ],
        name="sequential",
    )


@pytest.mark.parametrize(
    "build, input_shape",
    [(_sequential, (5, 5, 2)), (_cnn, (8, 8, 1)), (_residual, (6, 6, 2))],
)
@pytest.mark.parametrize("rate", [0.8, 0.95])
def test_shrink_keeps_outputs_of_pruned_models(build, input_shape, rate):
    model = build()
    _normal_weights(model)
    _prune(model, rate)
    small = shrink(model)
    assert type(small) is type(model)
    assert small.count_params() < model.count_params()
    x = np.random.default_rng(6).normal(size=(8, *input_shape)).astype("float32")
    _assert_same_outputs(model, small, x)


def test_shrink_keeps_the_channels_of_a_residual_sum_together():
    model = _residual()
    _normal_weights(model)
    _prune(model, 0.95)
    small = shrink(model)
    stem = small.get_layer("stem").filters
    assert stem < 6
    for block in range(2):
        assert small.get_layer(f"b{block}_conv2").filters == stem


def test_shrink_rejects_a_subclassed_model():
    class Subclassed(keras.Model):
        def __init__(self):
            super().__init__()
            self.dense = keras.layers.Dense(2)

        def call(self, x):
            return self.dense(x)

    model = Subclassed()
    model(np.zeros((1, 3), "float32"))
    with pytest.raises(TypeError, match="Expected a Keras 3 Sequential or functional"):
        shrink(model)


@pytest.mark.parametrize("atol", [0, -1.0, True, "1e-5"])
def test_shrink_rejects_bad_atol(atol):
    with pytest.raises(ValueError, match="Invalid value for argument `atol`"):
        shrink(_mlp(), atol=atol)


def test_shrink_checks_outputs_on_given_inputs():
    model = _mlp()
    _kill_units(model)
    x = np.random.default_rng(7).normal(size=(4, 6)).astype("float32")
    small = shrink(model, verify_inputs=x)
    _assert_same_outputs(model, small, x)


# ------------------------------------------- depthwise, separable, padding


def _channel_prune(model, rate):
    masks = hypersparse_tf.global_magnitude_masks(model, rate, structure="channel")
    hypersparse_tf.apply_masks(model, masks)
    return masks


def _kept_columns(mask):
    """Output channels of a kernel mask that keep any weight."""
    return int(np.any(mask.reshape(-1, mask.shape[-1]), axis=0).sum())


@pytest.mark.parametrize("separable", [False, True], ids=["depthwise", "separable"])
def test_shrink_deletes_the_channels_channel_masks_remove_in_a_mobilenet(separable):
    keras.utils.set_random_seed(0)
    model = hypersparse_tf.models.mobilenet_style(
        input_shape=(16, 16, 3), width=4, separable=separable
    )
    _normal_weights(model)
    masks = _channel_prune(model, 0.5)
    small = shrink(model)
    suffix = "_sep/pointwise_kernel" if separable else "_pw/kernel"
    layer = "_sep" if separable else "_pw"
    for index in range(1, 6):
        kept = _kept_columns(masks[f"block{index}{suffix}"])
        assert small.get_layer(f"block{index}{layer}").filters == kept
        if not separable:
            # The next depthwise filters exactly the channels that stay.
            following = f"block{index + 1}_dw" if index < 5 else None
            if following:
                kernel = small.get_layer(following).get_weights()[0]
                assert kernel.shape[-2] == kept
    assert small.get_layer("stem_conv").filters == _kept_columns(
        masks["stem_conv/kernel"]
    )
    assert small.count_params() < 0.7 * model.count_params()
    x = np.random.default_rng(7).normal(size=(8, 16, 16, 3)).astype("float32")
    _assert_same_outputs(model, small, x)
    cost, small_cost = map(hypersparse_tf.model_cost, (model, small))
    assert small_cost["macs"] < cost["macs"]


def _depthwise_model(padding, filters_zero):
    """conv (no bias) + BN + ReLU + depthwise 3x3 + 1x1 conv: channel 0 of
    "conv" is zero, so it holds BatchNorm's non-zero constant."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((6, 6, 2))
    x = keras.layers.Conv2D(4, 3, padding="same", use_bias=False, name="conv")(inputs)
    x = keras.layers.BatchNormalization(name="bn")(x)
    x = keras.layers.ReLU()(x)
    x = keras.layers.DepthwiseConv2D(3, padding=padding, name="dw")(x)
    x = keras.layers.Conv2D(3, 1, padding="same", name="pw")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inputs, keras.layers.Dense(2, name="out")(x))
    conv = model.get_layer("conv")
    kernel = conv.get_weights()[0]
    kernel[..., 0] = 0.0
    conv.set_weights([kernel])
    model.get_layer("bn").set_weights(
        [np.full(4, value, "float32") for value in (0.5, 0.2, -1.0, 0.999)]
    )
    if filters_zero:
        dw = model.get_layer("dw")
        dw_kernel, dw_bias = dw.get_weights()
        dw_kernel[..., 0, :] = 0.0
        dw.set_weights([dw_kernel, dw_bias + 0.3])
    return model


@pytest.mark.parametrize(
    "padding, filters_zero, filters",
    [
        ("valid", False, 3),  # the constant passes the depthwise: folds
        ("same", False, 4),  # its border differs: the channel stays
        ("same", True, 3),  # a zero filter holds its bias: folds into the 1x1
    ],
)
def test_shrink_follows_constants_through_a_depthwise_layer(
    padding, filters_zero, filters
):
    model = _depthwise_model(padding, filters_zero)
    small = shrink(model)
    assert small.get_layer("conv").filters == filters
    assert small.get_layer("dw").get_weights()[0].shape == (3, 3, filters, 1)
    assert small.get_layer("pw").get_weights()[0].shape == (1, 1, filters, 3)
    x = np.random.default_rng(8).normal(size=(4, 6, 6, 2)).astype("float32")
    _assert_same_outputs(model, small, x)


def test_shrink_follows_zero_padding():
    keras.utils.set_random_seed(0)
    model = hypersparse_tf.models.resnet(
        8, input_shape=(8, 8, 3), width=4, symmetric_padding=True
    )
    assert any(isinstance(x, keras.layers.ZeroPadding2D) for x in model.layers)
    _normal_weights(model)
    masks = _channel_prune(model, 0.5)
    small = shrink(model)
    for key, mask in masks.items():
        layer, name = key.split("/")
        if layer != "predictions" and name == "kernel":
            assert small.get_layer(layer).filters == _kept_columns(mask), key
    x = np.random.default_rng(9).normal(size=(4, 8, 8, 3)).astype("float32")
    _assert_same_outputs(model, small, x)


def test_shrink_refuses_a_model_with_nan_outputs():
    model = _mlp()
    kernel, bias = model.get_layer("hidden").get_weights()
    kernel[0, 0] = np.nan
    model.get_layer("hidden").set_weights([kernel, bias])
    with pytest.raises(ValueError, match="argument `model`.*NaN or inf outputs"):
        shrink(model)


def test_resnet32_trained_with_channel_hypersparse_shrinks_to_the_same_outputs():
    keras.utils.set_random_seed(0)
    model = hypersparse_tf.models.resnet(32, input_shape=(32, 32, 3))
    reg = hypersparse_tf.HyperSparse(0.5, coefficient=1e-3, structure="channel")
    hypersparse_tf.attach(model, reg)
    model.compile(
        optimizer=keras.optimizers.SGD(0.05, momentum=0.9),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    rng = np.random.default_rng(0)
    x = rng.normal(size=(16, 32, 32, 3)).astype("float32")
    reg.update_statistics()
    model.fit(x, np.arange(16) % 10, batch_size=8, epochs=1, verbose=0)
    masks = hypersparse_tf.global_magnitude_masks(model, 0.5, structure="channel")
    hypersparse_tf.apply_masks(model, masks)
    small = shrink(model, verify_inputs=x)
    for key, mask in masks.items():
        layer, name = key.split("/")
        if name == "kernel" and layer != "predictions":
            kept = int(mask.any(axis=(0, 1, 2)).sum())
            assert small.get_layer(layer).filters == kept, key
    assert small.count_params() < 0.6 * model.count_params()
    _assert_same_outputs(model, small, x[:4])
