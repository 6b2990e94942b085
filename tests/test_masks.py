import math

import keras
import numpy as np
import pytest

import hypersparse_tf
from hypersparse_tf.masks import magnitude_masks
from tests.conftest import MIXED_KEYS
from tests.conftest import assert_sparsity


def _size(model):
    return sum(w.numpy().size for w in hypersparse_tf.prunable_weights(model).values())


@pytest.mark.parametrize("prune_rate", [0.1, 0.5, 0.9, 0.98, 0.995])
def test_global_magnitude_masks_remove_exactly_floor_kappa_n(model, prune_rate):
    masks = hypersparse_tf.global_magnitude_masks(model, prune_rate)
    assert list(masks) == MIXED_KEYS
    n = _size(model)
    removed = sum(int((~m).sum()) for m in masks.values())
    assert removed == math.floor(prune_rate * n)
    weights = hypersparse_tf.prunable_weights(model)
    kept = np.concatenate([np.abs(weights[k].numpy()[m]) for k, m in masks.items()])
    gone = np.concatenate([np.abs(weights[k].numpy()[~m]) for k, m in masks.items()])
    assert gone.max() <= kept.min()  # one global threshold


def test_global_magnitude_masks_exact_on_ties():
    values = {"a": np.array([[1.0, 1.0], [1.0, 2.0]]), "b": np.array([1.0, 0.0, 3.0])}
    masks = magnitude_masks(values, 0.5)  # floor(3.5) = 3 removed: 0, then two 1s
    np.testing.assert_array_equal(masks["a"], [[False, False], [True, True]])
    np.testing.assert_array_equal(masks["b"], [True, False, True])


def test_global_magnitude_masks_many_zeros():
    model = keras.Sequential([keras.Input((10,)), keras.layers.Dense(10, name="d")])
    values = np.zeros((10, 10), "float32")
    values[3] = np.arange(1, 11)
    model.get_layer("d").kernel.assign(values)
    masks = hypersparse_tf.global_magnitude_masks(model, 0.85)
    assert int((~masks["d/kernel"]).sum()) == 85
    assert masks["d/kernel"][3].all()


def test_apply_masks_zeroes_exactly_the_masked_weights(model):
    masks = hypersparse_tf.global_magnitude_masks(model, 0.9)
    before = {k: w.numpy() for k, w in hypersparse_tf.prunable_weights(model).items()}
    hypersparse_tf.apply_masks(model, masks)
    n = _size(model)
    assert_sparsity(model, math.floor(0.9 * n))
    assert hypersparse_tf.sparsity(model) == math.floor(0.9 * n) / n
    for key, weight in hypersparse_tf.prunable_weights(model).items():
        np.testing.assert_array_equal(
            weight.numpy(), np.where(masks[key], before[key], 0)
        )


def test_apply_masks_accepts_0_1_arrays(model):
    masks = hypersparse_tf.global_magnitude_masks(model, 0.5)
    hypersparse_tf.apply_masks(model, {k: m.astype("int8") for k, m in masks.items()})
    assert hypersparse_tf.sparsity(model) == math.floor(0.5 * _size(model)) / _size(
        model
    )


def _bad_masks(model):
    good = hypersparse_tf.global_magnitude_masks(model, 0.9)
    missing = dict(good)
    del missing["separable/pointwise_kernel"]
    extra = dict(good, **{"dense/bias": np.ones(3, bool)})
    wrong_shape = dict(good, **{"dense/kernel": np.ones((3, 20), bool)})
    not_binary = dict(good, **{"dense/kernel": np.full((20, 3), 0.5)})
    return [
        (missing, ValueError, "no mask for the prunable weight 'separable/pointwise"),
        (extra, ValueError, "key 'dense/bias' names no prunable weight"),
        (wrong_shape, ValueError, r"mask of 'dense/kernel' has shape \(3, 20\)"),
        (not_binary, ValueError, "'dense/kernel' holds values other than 0/1"),
        ([1, 2], TypeError, "argument `masks`"),
    ]


@pytest.mark.parametrize("case", range(5))
def test_apply_masks_bad_masks_change_nothing(model, case):
    masks, error, message = _bad_masks(model)[case]
    before = [w.numpy() for w in model.weights]
    with pytest.raises(error, match=message):
        hypersparse_tf.apply_masks(model, masks)
    for old, weight in zip(before, model.weights, strict=True):
        np.testing.assert_array_equal(old, weight.numpy())


@pytest.mark.parametrize("prune_rate", [0, 1.0, float("nan"), "high"])
def test_global_magnitude_masks_bad_prune_rate(model, prune_rate):
    with pytest.raises(ValueError, match="argument `prune_rate`"):
        hypersparse_tf.global_magnitude_masks(model, prune_rate)


def test_masks_unbuilt_model():
    with pytest.raises(ValueError, match="not built"):
        hypersparse_tf.global_magnitude_masks(
            keras.Sequential([keras.layers.Dense(3)]), 0.5
        )


def test_sparsity_report_lists_every_kernel_and_the_total(model):
    hypersparse_tf.apply_masks(model, hypersparse_tf.global_magnitude_masks(model, 0.5))
    report = hypersparse_tf.sparsity_report(model)
    lines = report.splitlines()
    assert lines[0].split() == ["weight", "shape", "size", "non-zero", "sparsity"]
    for key in MIXED_KEYS:
        assert any(line.startswith(key + " ") for line in lines)
    n = _size(model)
    total = lines[-1].split()
    assert total[0] == "total"
    assert total[1] == f"{n:,d}"
    assert total[2] == f"{n - math.floor(0.5 * n):,d}"
    dense = next(line for line in lines if line.startswith("dense/kernel"))
    zeros = int((model.get_layer("dense").kernel.numpy() == 0).sum())
    assert dense.split()[-1] == f"{zeros / 60:.2%}"
