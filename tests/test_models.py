"""Tests of the reference and device models: sizes, shapes, argument checks."""

import re

import keras
import numpy as np
import pytest

import hypersparse_tf
from hypersparse_tf import models
from tests.conftest import TF_KERAS_MISSING
from tests.conftest import copy_weights_by_layer_name


def num_prunable(model):
    weights = hypersparse_tf.prunable_weights(model)
    return sum(int(np.prod(w.shape)) for w in weights.values())


def conv_and_dense_names(model):
    kinds = (keras.layers.Conv2D, keras.layers.Dense)
    return [layer.name for layer in model.layers if isinstance(layer, kinds)]


def test_resnet_default_has_reference_prunable_count():
    model = models.resnet(32)
    assert num_prunable(model) == 1_855_584
    assert len(hypersparse_tf.prunable_weights(model)) == 34
    assert model.name == "resnet32"


def test_resnet_structure_matches_reference():
    model = models.resnet(32)
    convs = [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]
    assert all(not layer.use_bias for layer in convs)
    shortcuts = [layer for layer in convs if layer.kernel_size == (1, 1)]
    assert [layer.name for layer in shortcuts] == [
        "stage2_block1_shortcut_conv",
        "stage3_block1_shortcut_conv",
    ]
    assert [layer.filters for layer in shortcuts] == [64, 128]
    assert [layer.strides for layer in shortcuts] == [(2, 2), (2, 2)]
    assert model.get_layer("stem_conv").filters == 32
    assert model.get_layer("stage3_block5_conv2").filters == 128
    assert model.get_layer("predictions").kernel.shape == (128, 10)


@pytest.mark.parametrize(
    "depth, width, expected",
    [(8, 16, 77_360), (20, 16, 270_896), (8, 32, 307_296)],
)
def test_resnet_depth_and_width_set_prunable_count(depth, width, expected):
    assert num_prunable(models.resnet(depth, width=width)) == expected


def test_resnet_output_shape_is_batch_by_classes():
    model = models.resnet(8, num_classes=100, input_shape=(16, 16, 3), width=8)
    outputs = model(np.zeros((2, 16, 16, 3), "float32"), training=False)
    assert tuple(outputs.shape) == (2, 100)


@pytest.mark.parametrize("depth", [2, 7, 9, 31, 33, 32.0, "32", None, True])
def test_resnet_depth_not_6n_plus_2_raises(depth):
    with pytest.raises(ValueError, match=r"argument `depth`. Expected 6n\+2") as info:
        models.resnet(depth)
    assert str(info.value).endswith(f"Received: depth={depth!r}")


@pytest.mark.parametrize("width", [0, -1, 1.5, None])
def test_resnet_bad_width_raises(width):
    with pytest.raises(ValueError, match=f"Received: width={width!r}"):
        models.resnet(8, width=width)


def test_vgg19_bn_default_has_reference_prunable_count():
    model = models.vgg19_bn()
    assert num_prunable(model) == 20_024_000
    assert len(hypersparse_tf.prunable_weights(model)) == 17
    convs = [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]
    assert [layer.filters for layer in convs] == [
        entry for entry in models.VGG19_CONFIG if entry != "M"
    ]
    assert all(not layer.use_bias for layer in convs)
    assert model.get_layer("predictions").kernel.shape == (512, 10)


def test_vgg19_bn_output_shape_is_batch_by_classes():
    model = models.vgg19_bn(num_classes=100)
    outputs = model(np.zeros((1, 32, 32, 3), "float32"), training=False)
    assert tuple(outputs.shape) == (1, 100)


def test_vgg19_bn_pools_the_whole_map_into_512_features():
    # The reference: AvgPool2d(2) on CIFAR's 2x2 map, AvgPool2d(4) on
    # TinyImageNet's 4x4, then Linear(512, classes).
    model = models.vgg19_bn(num_classes=200, input_shape=(64, 64, 3))
    assert model.get_layer("predictions").kernel.shape == (512, 200)
    assert model.get_layer("avg_pool").pool_size == (4, 4)
    x = np.random.default_rng(0).random((2, 64, 64, 3), np.float32)
    features = keras.Model(model.input, model.get_layer("pool4").output)
    pooled = keras.Model(model.input, model.get_layer("flatten").output)
    maps = np.asarray(features(x, training=False))
    # After pool4 the last four convolutions keep the 4x4 map.
    last = keras.Model(model.input, model.get_layer("block5_16_relu").output)
    np.testing.assert_allclose(
        np.asarray(pooled(x, training=False)),
        np.asarray(last(x, training=False)).mean(axis=(1, 2)),
        rtol=1e-5,
        atol=1e-6,
    )
    assert maps.shape[1:3] == (4, 4)


REFERENCE_STYLE = dict(
    batchnorm_momentum=0.9, batchnorm_epsilon=1e-5, kernel_initializer="reference"
)


@pytest.mark.parametrize(
    "build, fan, expected",
    [
        (
            lambda: models.resnet(32, symmetric_padding=True, **REFERENCE_STYLE),
            "out",
            1855584,
        ),
        (lambda: models.vgg19_bn(**REFERENCE_STYLE), "in", 20024000),
    ],
    ids=["resnet32", "vgg19_bn"],
)
def test_reference_style_keeps_the_network_and_sets_init_and_batchnorm(
    build, fan, expected
):
    keras.utils.set_random_seed(0)
    model = build()
    weights = hypersparse_tf.prunable_weights(model)
    assert sum(int(np.prod(w.shape)) for w in weights.values()) == expected
    assert model.output_shape == (None, 10)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            assert (layer.momentum, layer.epsilon) == (0.9, 1e-5)
    kernels = [w.numpy() for k, w in weights.items() if k != "predictions/kernel"]
    # Kaiming normal, untruncated: std sqrt(2 / fan), tails beyond 2 std.
    for kernel in kernels[:6]:
        h, w, fan_in, fan_out = kernel.shape
        std = np.sqrt(2 / (h * w * (fan_out if fan == "out" else fan_in)))
        assert kernel.std() == pytest.approx(std, rel=0.1)
        assert np.abs(kernel).max() > 2.5 * std  # a truncated normal stops at 2
    assert len({k.tobytes() for k in kernels}) == len(kernels)  # all different
    assert weights["predictions/kernel"].numpy().std() == pytest.approx(0.01, rel=0.1)


def test_resnet_symmetric_padding_centres_the_stride_2_convolution():
    model = models.resnet(8, width=2, symmetric_padding=True)
    pad = model.get_layer("stage2_block1_conv1_pad")
    conv = model.get_layer("stage2_block1_conv1")
    shortcut = model.get_layer("stage2_block1_shortcut_conv")
    assert pad.padding == ((1, 1), (1, 1)) and conv.padding == "valid"
    # A kernel that passes the centre pixel through: output (i, j) must be
    # input (2i, 2j), the pixel the 1x1 stride-2 shortcut reads too.
    kernel = np.zeros(conv.kernel.shape, np.float32)
    for c in range(kernel.shape[2]):  # 2 input channels, 4 output channels
        kernel[1, 1, c, c] = 1.0
    conv.kernel.assign(kernel)
    x = np.random.default_rng(0).random((1, 32, 32, 2), np.float32)
    main = keras.Sequential([pad, conv])
    np.testing.assert_array_equal(np.asarray(main(x))[..., :2], x[:, ::2, ::2])
    identity = np.eye(2, dtype=np.float32)[None, None]
    shortcut.kernel.assign(np.pad(identity, ((0, 0), (0, 0), (0, 0), (0, 2))))
    np.testing.assert_array_equal(np.asarray(shortcut(x))[..., :2], x[:, ::2, ::2])
    same = models.resnet(8, width=2)
    assert same.get_layer("stage2_block1_conv1").padding == "same"
    assert "stage2_block1_conv1_pad" not in [layer.name for layer in same.layers]


def test_default_models_build_as_before_from_the_same_seed():
    keras.utils.set_random_seed(0)
    first = models.resnet(8, width=4)
    keras.utils.set_random_seed(0)
    second = models.resnet(8, width=4, kernel_initializer="he_normal")
    for a, b in zip(first.get_weights(), second.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize(
    "kwargs, argument",
    [
        (dict(batchnorm_momentum=1.0), "batchnorm_momentum"),
        (dict(batchnorm_epsilon=0.0), "batchnorm_epsilon"),
        (dict(kernel_initializer="kaiming_fan_out"), "kernel_initializer"),
        (dict(symmetric_padding=1), "symmetric_padding"),
    ],
)
def test_reference_style_bad_arguments(kwargs, argument):
    with pytest.raises((ValueError, TypeError), match=f"argument `{argument}`"):
        models.resnet(8, **kwargs)


@pytest.mark.parametrize("input_shape", [(31, 32, 3), (32, 16, 3)])
def test_vgg19_bn_input_below_32_raises(input_shape):
    with pytest.raises(ValueError, match="Expected height and width >= 32"):
        models.vgg19_bn(input_shape=input_shape)


def test_lenet_300_100_has_classic_prunable_count():
    model = models.lenet_300_100()
    assert num_prunable(model) == 266_200
    assert conv_and_dense_names(model) == ["dense1", "dense2", "predictions"]
    outputs = model(np.zeros((3, 28, 28, 1), "float32"))
    assert tuple(outputs.shape) == (3, 10)


def test_lenet_300_100_accepts_flat_input():
    model = models.lenet_300_100(num_classes=2, input_shape=(64,))
    assert num_prunable(model) == 64 * 300 + 300 * 100 + 100 * 2


@pytest.mark.parametrize(
    "input_shape, expected_prunable",
    [((28, 28, 1), 20_432), ((8, 8, 1), 6_032), ((4, 4, 1), 5_072)],
)
def test_small_cnn_fits_a_microcontroller(input_shape, expected_prunable):
    model = models.small_cnn(input_shape=input_shape)
    assert num_prunable(model) == expected_prunable
    # Full-int8 TFLite stores ~1 byte per weight plus overhead: < 40k params
    # keeps the flatbuffer well under 64 KB.
    assert model.count_params() < 40_000
    outputs = model(np.zeros((2, *input_shape), "float32"), training=False)
    assert tuple(outputs.shape) == (2, 10)


ALL_BUILDERS = pytest.mark.parametrize(
    "build",
    [
        models.resnet,
        models.vgg19_bn,
        models.lenet_300_100,
        models.small_cnn,
        models.mobilenet_style,
    ],
    ids=["resnet", "vgg19_bn", "lenet_300_100", "small_cnn", "mobilenet_style"],
)


def test_small_cnn_input_below_4_raises():
    with pytest.raises(ValueError, match="Expected height and width >= 4"):
        models.small_cnn(input_shape=(3, 8, 1))


@ALL_BUILDERS
def test_models_conv_and_dense_names_are_unique(build):
    kwargs = {"depth": 8} if build is models.resnet else {}
    names = conv_and_dense_names(build(**kwargs))
    assert names and len(names) == len(set(names))


@ALL_BUILDERS
@pytest.mark.parametrize("num_classes", [1, 0, 2.0, True, None])
def test_models_num_classes_below_2_raises(build, num_classes):
    with pytest.raises(
        ValueError,
        match=(
            r"argument `num_classes`. Expected an int >= 2. "
            rf"Received: num_classes={num_classes!r}"
        ),
    ):
        build(num_classes=num_classes)


def test_models_num_classes_2_is_accepted():
    assert models.small_cnn(num_classes=2).output_shape == (None, 2)


@pytest.mark.parametrize(
    "input_shape",
    [(32, 32), (32, 32, 3, 1), (0, 32, 3), (32, -1, 3), (32.0, 32, 3), "32x32", None],
)
@pytest.mark.parametrize(
    "build",
    [models.resnet, models.vgg19_bn, models.small_cnn, models.mobilenet_style],
    ids=["resnet", "vgg19_bn", "small_cnn", "mobilenet_style"],
)
def test_models_bad_input_shape_raises(build, input_shape):
    with pytest.raises(
        ValueError,
        match=r"argument `input_shape`. Expected a tuple \(height, width, channels\)",
    ):
        build(input_shape=input_shape)


@pytest.mark.parametrize("input_shape", [(), (28, 0), [28, -28], None])
def test_lenet_300_100_bad_input_shape_raises(input_shape):
    with pytest.raises(ValueError, match="Expected a non-empty tuple of positive"):
        models.lenet_300_100(input_shape=input_shape)


def test_mobilenet_style_layers_and_counts():
    model = models.mobilenet_style()
    shapes = dict(prunable_shapes(model))
    assert shapes["stem_conv/kernel"] == (3, 3, 3, 16)
    assert shapes["block1_dw/kernel"] == (3, 3, 16, 1)
    assert shapes["block5_pw/kernel"] == (1, 1, 128, 128)
    assert shapes["predictions/kernel"] == (128, 10)
    assert sum(np.prod(shape) for shape in shapes.values()) == 35_680
    assert model.count_params() == 38_634
    assert model.output_shape == (None, 10)
    # Three stride-2 layers: 32 -> 16 -> 8 -> 4.
    assert model.get_layer("block5_relu").output.shape == (None, 4, 4, 128)


def test_mobilenet_style_separable_has_the_same_kernels_in_one_layer():
    depthwise = models.mobilenet_style(width=4)
    separable = models.mobilenet_style(width=4, separable=True)
    assert separable.get_layer("block2_sep").strides == (2, 2)
    split = dict(prunable_shapes(depthwise))
    joined = dict(prunable_shapes(separable))
    assert joined["block3_sep/depthwise_kernel"] == split["block3_dw/kernel"]
    assert joined["block3_sep/pointwise_kernel"] == split["block3_pw/kernel"]


@pytest.mark.parametrize(
    "kwargs, argument",
    [
        ({"width": 0}, "width"),
        ({"width": 2.0}, "width"),
        ({"separable": "yes"}, "separable"),
        ({"input_shape": (7, 32, 3)}, "input_shape"),
    ],
)
def test_mobilenet_style_bad_arguments(kwargs, argument):
    with pytest.raises((ValueError, TypeError), match=f"argument `{argument}`"):
        models.mobilenet_style(**kwargs)


# ----------------------------------------------------------------- flavour

TWINS = {
    "lenet_300_100": (models.lenet_300_100, {}, (28, 28, 1)),
    "small_cnn": (models.small_cnn, {"input_shape": (8, 8, 1)}, (8, 8, 1)),
    "mobilenet_style": (
        models.mobilenet_style,
        {"input_shape": (16, 16, 3), "width": 4},
        (16, 16, 3),
    ),
    "mobilenet_style_separable": (
        models.mobilenet_style,
        {"input_shape": (16, 16, 3), "width": 4, "separable": True},
        (16, 16, 3),
    ),
    "resnet": (
        models.resnet,
        {"depth": 8, "width": 8, "input_shape": (16, 16, 3)},
        (16, 16, 3),
    ),
}


def prunable_shapes(model):
    weights = hypersparse_tf.prunable_weights(model)
    return [(key, tuple(weight.shape)) for key, weight in weights.items()]


def randomize_batch_norm(model, rng):
    """Moving statistics and affine parameters away from the identity."""
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            gamma, beta, mean, variance = layer.get_weights()
            layer.set_weights(
                [
                    rng.uniform(0.5, 1.5, gamma.shape).astype("float32"),
                    rng.normal(0, 0.1, beta.shape).astype("float32"),
                    rng.normal(0, 0.1, mean.shape).astype("float32"),
                    rng.uniform(0.5, 1.5, variance.shape).astype("float32"),
                ]
            )


@pytest.mark.parametrize("name", list(TWINS))
def test_models_tf_keras_flavour_is_the_same_network(name):
    build, kwargs, input_shape = TWINS[name]
    keras.utils.set_random_seed(0)
    keras3 = build(**kwargs)
    tf_keras = pytest.importorskip("tf_keras", reason=TF_KERAS_MISSING)
    twin = build(**kwargs, flavour="tf_keras")
    assert isinstance(keras3, keras.Model)
    assert isinstance(twin, tf_keras.Model)
    assert not isinstance(twin, keras.Model)
    assert twin.name == keras3.name
    assert [layer.name for layer in twin.layers] == [
        layer.name for layer in keras3.layers
    ]
    assert prunable_shapes(twin) == prunable_shapes(keras3)
    assert twin.count_params() == keras3.count_params()
    assert len(twin.non_trainable_weights) == len(keras3.non_trainable_weights)

    rng = np.random.default_rng(0)
    randomize_batch_norm(keras3, rng)
    copy_weights_by_layer_name(keras3, twin)
    x = rng.normal(size=(4, *input_shape)).astype("float32")
    expected = np.asarray(keras3(x, training=False))
    np.testing.assert_allclose(
        np.asarray(twin(x, training=False)), expected, rtol=0, atol=1e-5
    )
    assert expected.shape == (4, 10) and np.abs(expected).max() > 1e-2
    # The same weights give the same masks: masks move between flavours.
    masks = hypersparse_tf.global_magnitude_masks(keras3, 0.9)
    twin_masks = hypersparse_tf.global_magnitude_masks(twin, 0.9)
    for key, mask in masks.items():
        np.testing.assert_array_equal(twin_masks[key], mask)


def test_vgg19_bn_tf_keras_flavour_has_the_same_weights():
    keras3 = models.vgg19_bn()
    tf_keras = pytest.importorskip("tf_keras", reason=TF_KERAS_MISSING)
    twin = models.vgg19_bn(flavour="tf_keras")
    assert isinstance(twin, tf_keras.Model)
    assert [layer.name for layer in twin.layers] == [
        layer.name for layer in keras3.layers
    ]
    assert prunable_shapes(twin) == prunable_shapes(keras3)
    assert twin.count_params() == keras3.count_params() == 20_046_026
    assert num_prunable(twin) == 20_024_000


@pytest.mark.parametrize(
    "build",
    [models.resnet, models.vgg19_bn, models.lenet_300_100, models.small_cnn],
    ids=["resnet", "vgg19_bn", "lenet_300_100", "small_cnn"],
)
@pytest.mark.parametrize("flavour", ["keras2", "tf.keras", "Keras", None, 3])
def test_models_bad_flavour_raises(build, flavour):
    with pytest.raises(
        ValueError,
        match=(
            r"argument `flavour`. Expected one of \['keras', 'tf_keras'\]. "
            rf"Received: flavour={re.escape(repr(flavour))}"
        ),
    ):
        build(flavour=flavour)


def test_models_flavour_is_keyword_only():
    with pytest.raises(TypeError):
        models.lenet_300_100(10, (28, 28, 1), "tf_keras")
