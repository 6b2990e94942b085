import math

import keras
import numpy as np
import pytest

import hypersparse_tf
from hypersparse_tf.mask_constraints import MaskConstraint
from hypersparse_tf.masks import magnitude_masks
from tests.art_helpers import digits
from tests.art_helpers import mlp
from tests.conftest import MIXED_KEYS
from tests.conftest import TF_KERAS_MISSING
from tests.conftest import assert_sparsity
from tests.conftest import mixed_model


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
    extra = dict(good, **{"bn/moving_mean": np.ones(4, bool)})
    wrong_shape = dict(good, **{"dense/kernel": np.ones((3, 20), bool)})
    not_binary = dict(good, **{"dense/kernel": np.full((20, 3), 0.5)})
    return [
        (missing, ValueError, "no mask for the prunable weight 'separable/pointwise"),
        (extra, ValueError, "key 'bn/moving_mean' names no prunable weight"),
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


# ------------------------------------------------------ fix_masks / release_masks


def _kernels(model):
    return {k: w.numpy() for k, w in hypersparse_tf.prunable_weights(model).items()}


def _mlp_setup():
    """The digits MLP, its training set, its loss and a learning rate."""
    x_train, _, y_train, _ = digits()
    return mlp(), x_train, y_train, "sparse_categorical_crossentropy", 0.1


def _mixed_setup():
    """The mixed conv/BN/depthwise/separable/dense model on random data."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 8, 8, 3)).astype("float32")
    y = rng.normal(size=(64, 3)).astype("float32")
    return mixed_model(), x, y, "mse", 0.01


def _compile(model, loss, learning_rate, module=keras):
    """SGD with momentum and weight decay: decay moves every non-zero weight."""
    model.compile(
        optimizer=module.optimizers.SGD(learning_rate, momentum=0.9, weight_decay=1e-3),
        loss=loss,
    )
    return model


def _fit(model, x, y, epochs):
    model.fit(x, y, batch_size=64, epochs=epochs, shuffle=False, verbose=0)


def _assert_zero_outside(model, masks):
    for key, value in _kernels(model).items():
        assert np.all(value[~masks[key]] == 0), key


def _num_pruned(masks):
    return sum(int((~np.asarray(m, bool)).sum()) for m in masks.values())


def _constrained_mlp(max_norm=0.1):
    """The digits MLP with NonNeg on `d1` and MaxNorm on `d2`."""
    keras.utils.set_random_seed(0)
    return keras.Sequential(
        [
            keras.Input((64,)),
            keras.layers.Dense(
                64,
                activation="relu",
                name="d1",
                kernel_constraint=keras.constraints.NonNeg(),
            ),
            keras.layers.Dense(
                32,
                activation="relu",
                name="d2",
                kernel_constraint=keras.constraints.MaxNorm(max_norm),
            ),
            keras.layers.Dense(10, activation="softmax", name="out"),
        ],
        name="mlp",
    )


@pytest.mark.parametrize("setup", [_mlp_setup, _mixed_setup], ids=["mlp", "mixed"])
def test_fix_masks_pruned_weights_stay_zero_through_fit(setup):
    model, x, y, loss, learning_rate = setup()
    n = _size(model)
    masks = hypersparse_tf.global_magnitude_masks(model, 0.9)
    before = _kernels(model)
    hypersparse_tf.fix_masks(model, masks)
    for key, value in _kernels(model).items():
        np.testing.assert_array_equal(value, np.where(masks[key], before[key], 0))
    assert_sparsity(model, math.floor(0.9 * n))
    _compile(model, loss, learning_rate)
    _fit(model, x, y, epochs=3)
    after = _kernels(model)
    _assert_zero_outside(model, masks)
    for key, mask in masks.items():
        assert np.all(after[key][mask] != before[key][mask]), key  # trained
    assert_sparsity(model, math.floor(0.9 * n))


def test_fix_masks_after_fit_drops_the_traced_train_step():
    model, x, y, loss, learning_rate = _mlp_setup()
    _compile(model, loss, learning_rate)
    _fit(model, x, y, epochs=1)  # traces a train step without the constraints
    model.evaluate(x, y, verbose=0)
    assert model.train_function is not None
    masks = hypersparse_tf.global_magnitude_masks(model, 0.9)
    hypersparse_tf.fix_masks(model, masks)
    assert model.train_function is None
    assert model.test_function is None
    before = _kernels(model)
    _fit(model, x, y, epochs=2)
    _assert_zero_outside(model, masks)
    assert_sparsity(model, math.floor(0.9 * _size(model)))
    after = _kernels(model)
    for key, mask in masks.items():
        assert np.all(after[key][mask] != before[key][mask]), key


def test_fix_masks_applies_the_weight_own_constraint_first():
    model = _constrained_mlp(max_norm=0.1)
    x, _, y, _ = digits()
    d1 = model.get_layer("d1").kernel
    d2 = model.get_layer("d2").kernel
    own = d1.constraint, d2.constraint
    masks = hypersparse_tf.global_magnitude_masks(model, 0.5)
    hypersparse_tf.fix_masks(model, masks)
    assert isinstance(d1.constraint, MaskConstraint)
    assert (d1.constraint.previous, d2.constraint.previous) == own
    # Only the optimizer applies constraints: both are still violated here.
    assert d1.numpy().min() < 0
    assert np.linalg.norm(d2.numpy(), axis=0).max() > 0.1
    _compile(model, "sparse_categorical_crossentropy", 0.1)
    _fit(model, x, y, epochs=2)
    _assert_zero_outside(model, masks)
    assert d1.numpy().min() == 0  # NonNeg
    assert np.linalg.norm(d2.numpy(), axis=0).max() <= 0.1 * (1 + 1e-6)  # MaxNorm
    assert np.count_nonzero(d1.numpy()) > 0.2 * d1.numpy().size
    assert np.count_nonzero(d2.numpy()) == int(masks["d2/kernel"].sum())


def test_fix_masks_again_replaces_the_masks():
    model, x, y, loss, learning_rate = _mlp_setup()
    first = hypersparse_tf.global_magnitude_masks(model, 0.5)
    rng = np.random.default_rng(1)
    second = {key: rng.random(mask.shape) < 0.5 for key, mask in first.items()}
    hypersparse_tf.fix_masks(model, first)
    _compile(model, loss, learning_rate)
    _fit(model, x, y, epochs=1)
    hypersparse_tf.fix_masks(model, second)
    for weight in hypersparse_tf.prunable_weights(model).values():
        assert weight.constraint.previous is None  # replaced, not stacked
    before = _kernels(model)
    _assert_zero_outside(model, second)
    _fit(model, x, y, epochs=2)
    after = _kernels(model)
    _assert_zero_outside(model, second)
    for key in first:
        kept = first[key] & second[key]
        assert np.all(after[key][kept] != before[key][kept]), key
    # Zero after the first masks, kept by the second: trained again. Not all of
    # them: rows of d1 for the digits pixels that are always 0, and weights
    # into ReLU units dead on the whole set, get no gradient and stay 0.
    revived = {key: second[key] & ~first[key] for key in first}
    num_revived = sum(int(np.count_nonzero(after[k][m])) for k, m in revived.items())
    assert num_revived > 0.85 * sum(int(m.sum()) for m in revived.values())
    out = revived["out/kernel"]
    assert out.sum() > 0 and np.count_nonzero(after["out/kernel"][out]) == out.sum()
    hypersparse_tf.release_masks(model)
    for weight in hypersparse_tf.prunable_weights(model).values():
        assert weight.constraint is None


def test_release_masks_lets_pruned_weights_train_and_restores_own_constraint():
    model = _constrained_mlp(max_norm=0.1)
    x, _, y, _ = digits()
    weights = hypersparse_tf.prunable_weights(model)
    own = {key: weight.constraint for key, weight in weights.items()}
    masks = hypersparse_tf.global_magnitude_masks(model, 0.9)
    hypersparse_tf.fix_masks(model, masks)
    _compile(model, "sparse_categorical_crossentropy", 0.1)
    _fit(model, x, y, epochs=1)
    _assert_zero_outside(model, masks)
    hypersparse_tf.release_masks(model)
    assert model.train_function is None
    for key, weight in weights.items():
        assert weight.constraint is own[key]
    _fit(model, x, y, epochs=2)
    after = _kernels(model)
    # Pruned weights train again, except those into ReLU units dead on the
    # whole set, and in d1 those NonNeg holds at 0.
    for key, fraction in [("out/kernel", 0.8), ("d2/kernel", 0.5), ("d1/kernel", 0.2)]:
        pruned = ~masks[key]
        assert np.count_nonzero(after[key][pruned]) > fraction * pruned.sum(), key
    assert after["d1/kernel"].min() == 0  # NonNeg is back
    assert np.linalg.norm(after["d2/kernel"], axis=0).max() <= 0.1 * (1 + 1e-6)


def test_release_masks_without_fix_masks_changes_nothing():
    model = _constrained_mlp()
    own = {k: w.constraint for k, w in hypersparse_tf.prunable_weights(model).items()}
    before = [w.numpy() for w in model.weights]
    hypersparse_tf.release_masks(model)
    for key, weight in hypersparse_tf.prunable_weights(model).items():
        assert weight.constraint is own[key]
    for old, weight in zip(before, model.weights, strict=True):
        np.testing.assert_array_equal(old, weight.numpy())


@pytest.mark.parametrize("fixed_before", [False, True], ids=["fresh", "fixed"])
@pytest.mark.parametrize("case", range(5))
def test_fix_masks_bad_masks_change_nothing(model, case, fixed_before):
    if fixed_before:
        hypersparse_tf.fix_masks(
            model, hypersparse_tf.global_magnitude_masks(model, 0.5)
        )
    masks, error, message = _bad_masks(model)[case]
    before = [w.numpy() for w in model.weights]
    constraints = [w.constraint for w in model.weights]
    with pytest.raises(error, match=message):
        hypersparse_tf.fix_masks(model, masks)
    for old, weight in zip(before, model.weights, strict=True):
        np.testing.assert_array_equal(old, weight.numpy())
    for old, weight in zip(constraints, model.weights, strict=True):
        assert weight.constraint is old
    kinds = [isinstance(w.constraint, MaskConstraint) for w in model.weights]
    assert sum(kinds) == (len(MIXED_KEYS) if fixed_before else 0)


@pytest.mark.parametrize("twin", ["mlp", "mixed"])
def test_fix_masks_tf_keras_pruned_weights_stay_zero_through_fit(twin):
    tf_keras = pytest.importorskip("tf_keras", reason=TF_KERAS_MISSING)
    if twin == "mlp":
        _, x, y, loss, learning_rate = _mlp_setup()
        model = mlp(module=tf_keras)
    else:
        _, x, y, loss, learning_rate = _mixed_setup()
        model = mixed_model(module=tf_keras)
    _compile(model, loss, learning_rate, module=tf_keras)
    _fit(model, x, y, epochs=1)  # traces a train step without the constraints
    masks = hypersparse_tf.global_magnitude_masks(model, 0.9)
    before = _kernels(model)
    hypersparse_tf.fix_masks(model, masks)
    assert model.train_function is None
    _fit(model, x, y, epochs=2)
    _assert_zero_outside(model, masks)
    assert_sparsity(model, math.floor(0.9 * _size(model)))
    after = _kernels(model)
    for key, mask in masks.items():
        assert np.all(after[key][mask] != before[key][mask]), key
    hypersparse_tf.release_masks(model)
    for weight in hypersparse_tf.prunable_weights(model).values():
        assert weight.constraint is None
    _fit(model, x, y, epochs=1)
    assert hypersparse_tf.sparsity(model) < 0.5  # pruned weights train again


def test_fix_masks_tf_keras_keeps_the_weight_own_constraint():
    tf_keras = pytest.importorskip("tf_keras", reason=TF_KERAS_MISSING)
    model = tf_keras.Sequential(
        [
            tf_keras.Input((64,)),
            tf_keras.layers.Dense(
                32,
                activation="relu",
                name="d1",
                kernel_constraint=tf_keras.constraints.NonNeg(),
            ),
            tf_keras.layers.Dense(10, activation="softmax", name="out"),
        ]
    )
    x, _, y, _ = digits()
    d1 = model.get_layer("d1").kernel
    own = d1.constraint
    masks = hypersparse_tf.global_magnitude_masks(model, 0.5)
    hypersparse_tf.fix_masks(model, masks)
    assert d1.constraint.previous is own
    assert d1.numpy().min() < 0
    _compile(model, "sparse_categorical_crossentropy", 0.1, module=tf_keras)
    _fit(model, x, y, epochs=2)
    _assert_zero_outside(model, masks)
    assert d1.numpy().min() == 0
    assert np.count_nonzero(d1.numpy()) > 0.2 * d1.numpy().size
    hypersparse_tf.release_masks(model)
    assert d1.constraint is own


TRAIN_LOADED = r"""
import sys
import numpy as np
import keras
import hypersparse_tf
sys.path.insert(0, sys.argv[2])
from tests.art_helpers import digits
x, _, y, _ = digits()
if sys.argv[3] == "tf_keras":
    import tf_keras as module
    hypersparse_tf.register_with_tf_keras()
else:
    module = keras
model = module.models.load_model(sys.argv[1])
weights = hypersparse_tf.prunable_weights(model)
before = {k: w.numpy().copy() for k, w in weights.items()}
model.compile(optimizer=module.optimizers.SGD(0.1, momentum=0.9),
              loss="sparse_categorical_crossentropy")
model.fit(x, y, epochs=2, batch_size=64, verbose=0)
after = hypersparse_tf.prunable_weights(model)
zero_before = sum(int((v == 0).sum()) for v in before.values())
same_zeros = all(np.array_equal(before[k] == 0, after[k].numpy() == 0) for k in before)
trained = all(not np.array_equal(before[k], after[k].numpy()) for k in before)
print(zero_before, same_zeros, trained)
"""


def _train_loaded(path, flavour):
    import os
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    result = subprocess.run(
        [sys.executable, "-c", TRAIN_LOADED, str(path), root, flavour],
        capture_output=True,
        text=True,
        timeout=300,
        env=dict(os.environ, PYTHONPATH=root),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    zeros, same, trained = result.stdout.split()[-3:]
    return int(zeros), same == "True", trained == "True"


@pytest.mark.parametrize("flavour", ["keras", "tf_keras"])
def test_fix_masks_saved_mid_run_keeps_the_zeros_after_loading(flavour, tmp_path):
    if flavour == "tf_keras":
        module = pytest.importorskip("tf_keras", reason=TF_KERAS_MISSING)
        model = mlp(module=module)
    else:
        module, model = keras, mlp()
    x, _, y, _ = digits()
    masks = hypersparse_tf.global_magnitude_masks(model, 0.8)
    hypersparse_tf.fix_masks(model, masks)
    _compile(model, "sparse_categorical_crossentropy", 0.1, module=module)
    _fit(model, x, y, epochs=1)
    path = tmp_path / "midrun.keras"
    model.save(path)
    zeros, same_zeros, trained = _train_loaded(path, flavour)
    assert zeros == math.floor(0.8 * _size(model))  # and still zero after 2 epochs
    assert same_zeros and trained


def test_mask_constraint_config_round_trip_packs_the_mask():
    rng = np.random.default_rng(0)
    kept = rng.random((3, 5, 7)) < 0.3  # 105 entries: not a multiple of 8
    constraint = MaskConstraint(kept, previous=keras.constraints.NonNeg())
    config = constraint.get_config()
    assert len(config["packed"]) == 20  # ceil(105 / 8) = 14 bytes, base64
    assert all(isinstance(v, (str, list, dict, type(None))) for v in config.values())
    copy = MaskConstraint.from_config(config)
    np.testing.assert_array_equal(copy.mask.numpy() != 0, kept)
    assert isinstance(copy.previous, keras.constraints.NonNeg)
    w = rng.normal(size=kept.shape).astype("float32")
    np.testing.assert_array_equal(
        np.asarray(copy(w)), np.where(kept, np.maximum(w, 0), 0)
    )


def test_mask_constraint_config_keeps_a_tf_keras_own_constraint():
    tf_keras = pytest.importorskip("tf_keras", reason=TF_KERAS_MISSING)
    hypersparse_tf.register_with_tf_keras()
    constraint = MaskConstraint(np.ones((2, 2), bool), tf_keras.constraints.NonNeg())
    config = tf_keras.constraints.serialize(constraint)
    copy = tf_keras.constraints.deserialize(config)
    assert isinstance(copy, MaskConstraint)
    assert isinstance(copy.previous, tf_keras.constraints.NonNeg)
