"""Channel- and block-structured HyperSparse: groups, statistics, gradients,
masks, against NumPy float64."""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

import hypersparse_tf
from hypersparse_tf import groups
from tests.art_helpers import FAST
from tests.art_helpers import compiled
from tests.art_helpers import digits
from tests.conftest import mixed_model


def _residual(seed=0):
    """Two Dense layers whose units meet in an Add, then a classifier."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((64,))
    a = keras.layers.Dense(16, activation="relu", name="a")(inputs)
    b = keras.layers.Dense(16, name="b")(inputs)
    h = keras.layers.Add(name="add")([a, b])
    h = keras.layers.Dense(12, activation="relu", name="c")(h)
    outputs = keras.layers.Dense(10, activation="softmax", name="out")(h)
    return keras.Model(inputs, outputs, name="residual")


def _numpy_groups(grouping, values):
    """Sum of squares per group and the group of every weight, in float64."""
    sums = np.zeros(grouping.num_groups)
    members = []
    for kernel, value in zip(grouping.kernels, values, strict=True):
        value = np.asarray(value, np.float64)
        if kernel.block:
            rows, units = kernel.shape
            row_ids = np.arange(rows) // kernel.block
            local = row_ids[:, None] * units + np.arange(units)[None, :]
        else:
            permuted = np.transpose(
                np.arange(value.size).reshape(value.shape), kernel.perm
            )
            local = np.empty(value.size, np.int64)
            local[permuted.reshape(-1, kernel.columns)] = np.arange(kernel.columns)
            local = local.reshape(value.shape)
        ids = kernel.ids[local]
        np.add.at(sums, ids.ravel(), value.ravel() ** 2)
        members.append(ids)
    return sums, members


def test_channel_groups_of_every_layer_kind():
    model = mixed_model()
    reg = hypersparse_tf.HyperSparse(0.5, structure="channel")
    kernels = hypersparse_tf.attach(model, reg)
    keys = [k.key for k in reg.grouping.kernels]
    # The classifier ("dense", the model's output) is left out.
    assert keys == [
        "conv/kernel",
        "depthwise/kernel",
        "separable/depthwise_kernel",
        "separable/pointwise_kernel",
    ]
    assert len(kernels) == 4
    sizes = {k.key: (len(k.ids), int(k.sizes[0])) for k in reg.grouping.kernels}
    assert sizes == {
        "conv/kernel": (4, 27),  # 4 filters of 3x3x3
        "depthwise/kernel": (4, 9),  # 4 depthwise channels of 3x3
        "separable/depthwise_kernel": (4, 9),
        "separable/pointwise_kernel": (5, 4),  # 5 filters of 1x1x4
    }
    # A depthwise filter joins the group of the channel it filters: channel c
    # of "conv" is filtered by "depthwise" and then by "separable"'s depthwise
    # kernel, one group of 27 + 9 + 9 weights; the pointwise filters are 5
    # more groups.
    by_key = {k.key: k for k in reg.grouping.kernels}
    for key in ("depthwise/kernel", "separable/depthwise_kernel"):
        np.testing.assert_array_equal(by_key[key].ids, by_key["conv/kernel"].ids)
    assert reg.grouping.num_groups == 9
    np.testing.assert_array_equal(reg.grouping.sizes, [45] * 4 + [4] * 5)


def test_channels_that_meet_in_an_add_are_one_group():
    model = _residual()
    reg = hypersparse_tf.HyperSparse(0.5, structure="channel")
    hypersparse_tf.attach(model, reg)
    by_key = {k.key: k for k in reg.grouping.kernels}
    assert list(by_key) == ["a/kernel", "b/kernel", "c/kernel"]
    np.testing.assert_array_equal(by_key["a/kernel"].ids, by_key["b/kernel"].ids)
    assert reg.grouping.num_groups == 16 + 12
    assert set(reg.grouping.sizes[by_key["a/kernel"].ids]) == {128}  # 2 x 64


def test_block_groups_and_a_short_last_block():
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [keras.Input((10,)), keras.layers.Dense(6, name="d"), keras.layers.Dense(3)]
    )
    reg = hypersparse_tf.HyperSparse(0.5, structure="block", block_shape=(1, 4))
    hypersparse_tf.attach(model, reg)
    first = reg.grouping.kernels[0]
    assert first.key == "d/kernel" and len(first.ids) == 3 * 6
    np.testing.assert_array_equal(first.sizes.reshape(3, 6)[:, 0], [4, 4, 2])
    keep = np.zeros(reg.grouping.num_groups, bool)
    keep[first.ids[[0, 7]]] = True  # block (0, unit 0) and (1, unit 1)
    mask = reg.grouping.element_masks(keep)[0]
    expected = np.zeros((10, 6), bool)
    expected[0:4, 0] = True
    expected[4:8, 1] = True
    np.testing.assert_array_equal(mask, expected)


@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize("structure", ["channel", "block"])
def test_structured_statistics_and_gradients_match_numpy(structure, normalize):
    model = _residual(seed=1)
    reg = hypersparse_tf.HyperSparse(
        0.6, coefficient=0.01, structure=structure, normalize_groups=normalize
    )
    kernels = hypersparse_tf.attach(model, reg)
    values = [k.numpy() for k in kernels]
    values[0][:, 3] = 0.0  # a whole unit (and, for blocks, its blocks) at zero
    kernels[0].assign(values[0])
    reg.update_statistics()
    grouping = reg.grouping
    sums, members = _numpy_groups(grouping, values)
    sizes = grouping.sizes.astype(np.float64) if normalize else 1.0
    magnitudes = np.sqrt(sums / sizes)
    t = np.sort(magnitudes)[math.floor(0.6 * grouping.num_groups)]
    s = 0.6585 / t
    ratio = magnitudes.sum() / np.tanh(s * magnitudes).sum()
    assert reg.threshold.numpy() == pytest.approx(t, rel=1e-5)
    assert reg.scale.numpy() == pytest.approx(s, rel=1e-5)
    assert reg.ratio.numpy() == pytest.approx(ratio, rel=1e-5)
    with tf.GradientTape() as tape:
        loss = tf.add_n([reg(k) for k in kernels])
    gradients = tape.gradient(loss, kernels)
    for value, ids, gradient in zip(values, members, gradients, strict=True):
        g = magnitudes[ids]
        n = sizes[ids] if normalize else 1.0
        with np.errstate(invalid="ignore", divide="ignore"):
            expected = 0.01 * ratio * s / np.cosh(s * g) ** 2 * value / (g * n)
        expected = np.where(g > 0, expected, 0.0)
        got = gradient.numpy()
        assert np.isfinite(got).all()
        np.testing.assert_allclose(got, expected, rtol=2e-4, atol=1e-9)
    assert np.all(gradients[0].numpy()[:, 3] == 0)  # the zero group: zero, no NaN
    # The value: lambda * ratio * sum(tanh(s g)), a merged group once per kernel.
    counted = np.concatenate([np.unique(k.ids) for k in grouping.kernels])
    expected_loss = 0.01 * ratio * np.tanh(s * magnitudes[counted]).sum()
    assert float(loss) == pytest.approx(expected_loss, rel=1e-5)


def test_structured_gradient_is_the_numerical_gradient_in_float64():
    model = _residual(seed=2)
    reg = hypersparse_tf.HyperSparse(0.5, coefficient=0.1, structure="channel")
    kernels = hypersparse_tf.attach(model, reg)
    reg.update_statistics()
    grouping, index = reg.grouping, 2  # "c": not merged
    x0 = kernels[index].numpy().astype(np.float64)[:8, :5]
    sub = groups.KernelGroups(
        "c", (8, 5), (0, 1), 5, 0, grouping.kernels[index].ids[:5], np.full(5, 8)
    )
    sums = tf.constant(np.zeros(grouping.num_groups), tf.float64)

    def loss(x):
        return groups.structured_loss(
            sub, x, sums, grouping, tf.constant(0.1, tf.float64), reg.scale.numpy()
        )

    x0[:, 1] = 0.0  # a zero group: its gradient is 0, never NaN
    theoretical, numerical = tf.test.compute_gradient(loss, [tf.constant(x0)])
    assert np.isfinite(theoretical[0]).all()
    np.testing.assert_allclose(theoretical[0], numerical[0], atol=1e-6)


def test_structured_masks_remove_whole_groups_exactly_and_keep_one_per_layer():
    model = _residual(seed=3)
    reg = hypersparse_tf.HyperSparse(0.9, structure="channel")
    kernels = hypersparse_tf.attach(model, reg)
    values = [k.numpy() for k in kernels]
    values[2] *= 1e-3  # "c" alone would lose all 12 units to a global cut
    masks = reg.structured_masks(values)
    removed_a = ~masks[0].any(axis=0)
    np.testing.assert_array_equal(removed_a, ~masks[1].any(axis=0))  # merged
    removed = int(removed_a.sum()) + int((~masks[2].any(axis=0)).sum())
    assert removed == math.floor(0.9 * 28)  # 25 of 28 groups
    for mask in masks:  # whole columns, and every layer keeps one at least
        assert np.all(mask.all(axis=0) | ~mask.any(axis=0))
        assert mask.any()
    without = reg.structured_masks(values, min_groups=0)
    assert not without[2].any()  # the narrow layer emptied


def test_art_with_channel_structure_prunes_whole_units():
    x, _, y, _ = digits()
    model = compiled(_residual())
    reg = hypersparse_tf.HyperSparse(0.5, structure="channel")
    hypersparse_tf.attach(model, reg)
    art = hypersparse_tf.ART(reg, (x, y), **dict(FAST, lambda_init=1e-2))
    model.fit(x, y, epochs=200, batch_size=64, callbacks=[art], verbose=0)
    assert art.phase == "done"
    a, b, c = (model.get_layer(n).kernel.numpy() for n in "abc")
    gone_a = np.all(a == 0, axis=0)
    np.testing.assert_array_equal(gone_a, np.all(b == 0, axis=0))
    assert int(gone_a.sum()) + int(np.all(c == 0, axis=0).sum()) == 14  # of 28
    for kernel in (a, b, c):  # whole units or nothing
        assert np.all((kernel != 0).all(axis=0) | (kernel == 0).all(axis=0))
    for name in "abc":  # a removed unit's bias is 0 too, through fine-tuning
        layer = model.get_layer(name)
        gone = np.all(layer.kernel.numpy() == 0, axis=0)
        assert np.all(layer.bias.numpy()[gone] == 0)
        assert np.all(art.masks[f"{name}/bias"] == ~gone)


def test_structured_config_round_trip(tmp_path):
    reg = hypersparse_tf.HyperSparse(
        0.8, structure="block", block_shape=(1, 16), normalize_groups=False
    )
    config = reg.get_config()
    assert config["structure"] == "block" and config["block_shape"] == [1, 16]
    copy = hypersparse_tf.HyperSparse.from_config(config)
    assert (copy.structure, copy.block_shape, copy.normalize_groups) == (
        "block",
        (1, 16),
        False,
    )
    assert "structure" not in hypersparse_tf.HyperSparse(0.8).get_config()


@pytest.mark.parametrize(
    "kwargs, argument",
    [
        (dict(structure="filter"), "structure"),
        (dict(structure="block", block_shape=(4, 1)), "block_shape"),
        (dict(structure="block", block_shape=(1, 1)), "block_shape"),
        (dict(structure="channel", block_shape=(1, 4)), "block_shape"),
        (dict(normalize_groups=1), "normalize_groups"),
    ],
)
def test_structured_bad_arguments(kwargs, argument):
    with pytest.raises((ValueError, TypeError), match=f"argument `{argument}`"):
        hypersparse_tf.HyperSparse(0.5, **kwargs)


def test_structured_attach_bad_models_change_nothing():
    conv_only = keras.Sequential(
        [keras.Input((8, 8, 1)), keras.layers.Conv2D(4, 3), keras.layers.Flatten()]
    )
    block = hypersparse_tf.HyperSparse(0.5, structure="block")
    with pytest.raises(ValueError, match="A block structure needs Dense kernels"):
        hypersparse_tf.attach(conv_only, block)
    model = _residual()
    channel = hypersparse_tf.HyperSparse(0.5, structure="channel")
    with pytest.raises(ValueError, match="writes the model's outputs"):
        hypersparse_tf.attach(
            model, channel, predicate=lambda layer, w: "kernel" in w.name
        )
    assert all(w.regularizer is None for w in model.weights)
    too_wide = hypersparse_tf.HyperSparse(0.5, structure="block", block_shape=(1, 128))
    with pytest.raises(
        ValueError, match=r"argument `block_shape`.*inputs: \[12, 16, 64\]"
    ):
        hypersparse_tf.attach(model, too_wide)
    assert all(w.regularizer is None for w in model.weights)
    with pytest.raises(ValueError, match="attach it with"):
        channel.bind_kernels(model.trainable_weights[:1])


def test_global_magnitude_masks_by_channel_shrink_to_a_smaller_model():
    model = _residual(seed=4)
    masks = hypersparse_tf.global_magnitude_masks(model, 0.5, structure="channel")
    assert list(masks) == [
        "a/kernel",
        "b/kernel",
        "c/kernel",
        "out/kernel",
        "a/bias",  # the removed units' biases go with them
        "b/bias",
        "c/bias",
    ]
    assert masks["out/kernel"].all()  # the classes stay
    gone_a = ~masks["a/kernel"].any(axis=0)
    np.testing.assert_array_equal(gone_a, ~masks["b/kernel"].any(axis=0))
    assert int(gone_a.sum()) + int((~masks["c/kernel"].any(axis=0)).sum()) == 14
    for name in "abc":
        np.testing.assert_array_equal(
            masks[f"{name}/bias"], masks[f"{name}/kernel"].any(axis=0)
        )
    hypersparse_tf.apply_masks(model, masks)
    small = hypersparse_tf.shrink(model)
    assert small.get_layer("a").units == small.get_layer("b").units == 16 - gone_a.sum()
    assert small.count_params() < model.count_params()
    x = digits()[0][:32]
    np.testing.assert_allclose(
        small.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-5
    )


def test_global_magnitude_masks_by_block():
    model = _residual(seed=5)
    masks = hypersparse_tf.global_magnitude_masks(
        model, 0.75, structure="block", block_shape=(1, 4)
    )
    total = 0
    for key, mask in masks.items():
        rows, units = mask.shape
        blocks = mask.reshape(rows // 4, 4, units)
        assert np.all(blocks.all(axis=1) | ~blocks.any(axis=1)), key  # whole blocks
        total += int((~blocks.any(axis=1)).sum())
    groups_count = (64 // 4) * 16 * 2 + (16 // 4) * 12 + (12 // 4) * 10
    assert total == math.floor(0.75 * groups_count)


def test_block_structure_exports_to_litert_sparse_kernels_without_densify():
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((64,)),
            keras.layers.Dense(64, activation="relu", name="d1"),
            keras.layers.Dense(32, activation="relu", name="d2"),
            keras.layers.Dense(10, name="out"),
        ]
    )
    masks = hypersparse_tf.global_magnitude_masks(
        model, 0.9, structure="block", block_shape=(1, 4)
    )
    hypersparse_tf.apply_masks(model, masks)
    flatbuffer = hypersparse_tf.export.to_tflite(model, "mobile")
    info = hypersparse_tf.export.inspect_tflite(flatbuffer)
    assert "DENSIFY" not in info["operators"]
    blocked = [name for name, shape in info["sparse_blocks"].items() if shape == (1, 4)]
    # The converter stores a weight sparse from 30% zeros on: those in 1x4 blocks.
    mostly_zero = [k for k, m in masks.items() if 1 - m.mean() >= 0.3]
    assert len(mostly_zero) == 2 and len(blocked) == len(info["sparse_tensors"]) == 2
    x = digits()[0][:50]
    np.testing.assert_allclose(
        hypersparse_tf.export.run_tflite(flatbuffer, x),
        model.predict(x, verbose=0),
        atol=1e-5,
    )
    # Unstructured 90%: sparse storage that a DENSIFY op expands at load time.
    keras.utils.set_random_seed(0)
    plain = keras.models.clone_model(model)  # new initial weights, not blocks
    hypersparse_tf.apply_masks(plain, hypersparse_tf.global_magnitude_masks(plain, 0.9))
    unstructured = hypersparse_tf.export.inspect_tflite(
        hypersparse_tf.export.to_tflite(plain, "mobile")
    )
    assert "DENSIFY" in unstructured["operators"]
    assert set(unstructured["sparse_blocks"].values()) == {None}


def _conv_bn_model(seed=0):
    """3x3 "same" convolutions with BatchNorm: a channel whose kernel is 0
    holds BatchNorm's beta, which the next 3x3 convolution reads differently
    at the border."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((8, 8, 3))
    x = inputs
    for index, filters in enumerate((8, 12), start=1):
        x = keras.layers.Conv2D(filters, 3, padding="same", name=f"conv{index}")(x)
        x = keras.layers.BatchNormalization(name=f"bn{index}")(x)
        x = keras.layers.ReLU()(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inputs, keras.layers.Dense(3, name="out")(x))
    conv1 = model.get_layer("conv1")  # smaller: channel pruning reaches it
    conv1.kernel.assign(conv1.kernel.numpy() * 0.3)
    rng = np.random.default_rng(seed)
    for index in (1, 2):
        bn = model.get_layer(f"bn{index}")
        size = bn.gamma.shape[0]
        bn.set_weights(
            [
                rng.uniform(0.5, 1.5, size),
                rng.uniform(0.2, 1.0, size),  # beta > 0: ReLU keeps it
                rng.normal(0, 0.3, size),
                rng.uniform(0.5, 1.5, size),
            ]
        )
    return model


def test_channel_masks_zero_biases_and_batchnorm_so_shrink_deletes_exactly():
    model = _conv_bn_model()
    masks = hypersparse_tf.global_magnitude_masks(model, 0.5, structure="channel")
    kept = {n: masks[f"conv{n}/kernel"].any(axis=(0, 1, 2)) for n in (1, 2)}
    assert sum(int((~k).sum()) for k in kept.values()) == 10  # floor(0.5 * 20)
    assert not kept[1].all()
    for n in (1, 2):
        for key in (f"conv{n}/bias", f"bn{n}/gamma", f"bn{n}/beta"):
            np.testing.assert_array_equal(masks[key], kept[n])
    hypersparse_tf.apply_masks(model, masks)
    x = np.random.default_rng(1).normal(size=(4, 8, 8, 3)).astype("float32")
    features = keras.Model(model.inputs, model.get_layer("bn1").output)(x)
    assert np.all(keras.ops.convert_to_numpy(features)[..., ~kept[1]] == 0)
    small = hypersparse_tf.shrink(model)
    for n in (1, 2):  # every removed channel goes, none other
        assert small.get_layer(f"conv{n}").filters == int(kept[n].sum())
    np.testing.assert_allclose(small(x), model(x), atol=1e-5)


def test_channel_masks_without_their_batchnorm_masks_leave_channels_behind():
    model = _conv_bn_model()
    masks = hypersparse_tf.global_magnitude_masks(model, 0.5, structure="channel")
    kernels_only = {k: v for k, v in masks.items() if k.endswith("kernel")}
    hypersparse_tf.apply_masks(model, kernels_only)
    small = hypersparse_tf.shrink(model)
    # conv1's removed channels hold beta > 0, read by a "same" 3x3 conv.
    kept = int(masks["conv1/kernel"].any(axis=(0, 1, 2)).sum())
    assert small.get_layer("conv1").filters > kept


def test_fix_masks_keeps_removed_channels_zero_through_training():
    model = _conv_bn_model()
    masks = hypersparse_tf.global_magnitude_masks(model, 0.5, structure="channel")
    hypersparse_tf.fix_masks(model, masks)
    model.compile(optimizer="adam", loss="mse")
    rng = np.random.default_rng(2)
    x = rng.normal(size=(32, 8, 8, 3)).astype("float32")
    model.fit(x, rng.normal(size=(32, 3)), epochs=2, verbose=0)
    for n in (1, 2):
        gone = ~masks[f"conv{n}/kernel"].any(axis=(0, 1, 2))
        bn = model.get_layer(f"bn{n}")
        assert np.all(bn.gamma.numpy()[gone] == 0)
        assert np.all(bn.beta.numpy()[gone] == 0)
        assert np.all(bn.beta.numpy()[~gone] != 0)
        assert np.all(model.get_layer(f"conv{n}").bias.numpy()[gone] == 0)
    hypersparse_tf.release_masks(model)
    assert model.get_layer("bn1").beta.constraint is None
