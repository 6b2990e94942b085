"""`to_tfmot`: masks handed to tensorflow-model-optimization's own pruning.

tfmot is imported by the module fixture `tfmot`, never while tests are
collected: importing it sets `TF_USE_LEGACY_KERAS=1` for the process (and makes
`tf.keras` tf_keras), so the fixture puts the variable back afterwards.
"""

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

import hypersparse_tf
from tests.art_helpers import num_kernel_weights
from tests.conftest import MIXED_KEYS
from tests.conftest import assert_sparsity
from tests.conftest import copy_weights_by_layer_name
from tests.conftest import mixed_model
from tests.tf_keras_helpers import tf_keras
from tests.tf_keras_helpers import tf_keras_mixed_model
from tests.tf_keras_helpers import tf_keras_mlp

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def tfmot():
    before = os.environ.get("TF_USE_LEGACY_KERAS")
    import tensorflow_model_optimization

    yield tensorflow_model_optimization
    if before is None:
        os.environ.pop("TF_USE_LEGACY_KERAS", None)
    else:
        os.environ["TF_USE_LEGACY_KERAS"] = before


def _wrappers(model):
    return [layer for layer in model.layers if hasattr(layer, "pruning_vars")]


def _keras3_masks_and_twin(prune_rate=0.8):
    """Masks found on the Keras 3 mixed model, and its tf_keras twin with the
    same weights (copied by layer name), as a user hands them over."""
    keras3 = mixed_model()
    masks = hypersparse_tf.global_magnitude_masks(keras3, prune_rate)
    hypersparse_tf.apply_masks(keras3, masks)
    twin = tf_keras_mixed_model()
    reg = hypersparse_tf.HyperSparse(prune_rate)
    hypersparse_tf.attach(twin, reg)
    return keras3, masks, copy_weights_by_layer_name(keras3, twin)


def _data(seed=0, n=32):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, 8, 8, 3)).astype("float32"), rng.normal(
        size=(n, 3)
    ).astype("float32")


def test_to_tfmot_puts_the_masks_into_tfmot_wrappers(tfmot):
    keras3, masks, twin = _keras3_masks_and_twin()
    before = [w.numpy() for w in twin.weights]
    pruned = hypersparse_tf.to_tfmot(twin, masks)
    names = [w.name for w in _wrappers(pruned)]
    assert names == [f"prune_low_magnitude_{n}" for n in ("conv", "depthwise")] + [
        f"prune_low_magnitude_{n}" for n in ("separable", "dense")
    ]
    keys = []
    for wrapper in _wrappers(pruned):
        for weight, mask, threshold in wrapper.pruning_vars:
            key = f"{wrapper.layer.name}/{weight.name.split('/')[-1][:-2]}"
            key = key.replace("depthwise/depthwise_kernel", "depthwise/kernel")
            keys.append(key)
            np.testing.assert_array_equal(mask.numpy(), masks[key].astype("float32"))
            assert np.all(weight.numpy()[~masks[key]] == 0)
            assert threshold.numpy() == 0
        schedule = wrapper.pruning_schedule
        for step in (0, 1, 10**9):
            assert not bool(schedule(tf.constant(step, tf.int64))[0])
    assert sorted(keys) == sorted(MIXED_KEYS)
    # Exactly the Keras 3 model, masked; the input model is left as it was.
    x, _ = _data()
    np.testing.assert_allclose(pruned(x), keras3(x), atol=1e-5)
    for old, weight in zip(before, twin.weights, strict=True):
        np.testing.assert_array_equal(old, weight.numpy())
    # The HyperSparse regularizer has no work left once the mask is fixed.
    assert len(twin.losses) == 5 and len(pruned.losses) == 0


def test_to_tfmot_fine_tuning_keeps_the_zeros_and_strip_pruning(tfmot):
    _, masks, twin = _keras3_masks_and_twin(prune_rate=0.8)
    pruned = hypersparse_tf.to_tfmot(twin, masks)
    start = hypersparse_tf.prunable_weights(pruned)
    start = {k: w.numpy() for k, w in start.items()}
    pruned.compile(optimizer=tf_keras.optimizers.SGD(0.1, momentum=0.9), loss="mse")
    x, y = _data()
    pruned.fit(
        x,
        y,
        batch_size=8,
        epochs=2,
        callbacks=[tfmot.sparsity.keras.UpdatePruningStep()],
        verbose=0,
    )
    for wrapper in _wrappers(pruned):
        assert int(wrapper.pruning_step.numpy()) == 8  # tfmot counted the steps
    stripped = tfmot.sparsity.keras.strip_pruning(pruned)
    assert not _wrappers(stripped)
    n = num_kernel_weights(stripped)
    assert_sparsity(stripped, math.floor(0.8 * n))
    moved = 0
    for key, weight in hypersparse_tf.prunable_weights(stripped).items():
        value = weight.numpy()
        np.testing.assert_array_equal(value == 0, ~masks[key])  # the exact pattern
        moved += int(np.sum(value != start[key]))
    kept = sum(int(m.sum()) for m in masks.values())
    assert moved >= 0.9 * kept  # the kept weights did train (a few see no gradient)
    np.testing.assert_allclose(stripped(x), pruned(x), atol=1e-5)


def test_to_tfmot_pruning_summaries_log_the_masks(tfmot, tmp_path):
    pytest.importorskip("tensorboard", reason="PruningSummaries needs tensorboard")
    model = tf_keras_mlp()
    masks = hypersparse_tf.global_magnitude_masks(model, 0.9)
    pruned = hypersparse_tf.to_tfmot(model, masks)
    pruned.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    x = np.random.default_rng(0).random((16, 64), "float32")
    y = np.arange(16) % 10
    pruned.fit(
        x,
        y,
        epochs=1,
        callbacks=[
            tfmot.sparsity.keras.UpdatePruningStep(),
            tfmot.sparsity.keras.PruningSummaries(log_dir=str(tmp_path)),
        ],
        verbose=0,
    )
    logged = {}
    folder = tmp_path / "metrics"
    for name in os.listdir(folder):
        for record in tf.data.TFRecordDataset(str(folder / name)):
            event = tf.compat.v1.Event.FromString(record.numpy())
            for value in event.summary.value:
                logged[value.tag] = float(tf.make_ndarray(value.tensor))
    for key, mask in masks.items():
        tag = f"prune_low_magnitude_{key.split('/')[0]}/mask:0/sparsity"
        assert logged[tag] == pytest.approx(1 - mask.mean(), abs=1e-6)


def test_to_tfmot_saved_with_wrappers_loads_in_prune_scope(tfmot, tmp_path):
    model = tf_keras_mlp()
    masks = hypersparse_tf.global_magnitude_masks(model, 0.9)
    pruned = hypersparse_tf.to_tfmot(model, masks)
    path = str(tmp_path / "pruned.keras")
    pruned.save(path)
    with tfmot.sparsity.keras.prune_scope():
        loaded = tf_keras.models.load_model(path)
    for a, b in zip(_wrappers(pruned), _wrappers(loaded), strict=True):
        assert b.pruning_schedule.get_config() == a.pruning_schedule.get_config()
        ((_, mask_a, _),), ((_, mask_b, _),) = a.pruning_vars, b.pruning_vars
        np.testing.assert_array_equal(mask_a.numpy(), mask_b.numpy())


def test_to_tfmot_nested_model_and_predicate(tfmot):
    inner = tf_keras.Sequential(
        [tf_keras.Input((4,)), tf_keras.layers.Dense(4, name="inner_dense")],
        name="inner",
    )
    inputs = tf_keras.Input((4,))
    x = inner(tf_keras.layers.Dense(4, name="first")(inputs))
    model = tf_keras.Model(inputs, tf_keras.layers.Dense(2, name="head")(x))

    def with_biases(layer, weight):
        return hypersparse_tf.is_prunable_kernel(layer, weight) or (
            weight.name.endswith("bias:0")
        )

    masks = hypersparse_tf.global_magnitude_masks(model, 0.5, predicate=with_biases)
    assert "inner_dense/bias" in masks
    pruned = hypersparse_tf.to_tfmot(model, masks, predicate=with_biases)
    layers = pruned._flatten_layers(include_self=False, recursive=True)
    wrapped = [layer.layer.name for layer in layers if hasattr(layer, "pruning_vars")]
    assert wrapped == ["first", "inner_dense", "head"]
    hypersparse_tf.apply_masks(model, masks, predicate=with_biases)
    x = np.random.default_rng(0).normal(size=(5, 4)).astype("float32")
    np.testing.assert_allclose(pruned(x), model(x), atol=1e-6)


def test_to_tfmot_keras_3_model_says_how_to_make_the_twin():
    keras3 = mixed_model()
    masks = hypersparse_tf.global_magnitude_masks(keras3, 0.5)
    with pytest.raises(TypeError, match="tf_keras twin") as error:
        hypersparse_tf.to_tfmot(keras3, masks)
    assert "set_weights(layer.get_weights())" in str(error.value)
    with pytest.raises(TypeError, match="argument `model`"):
        hypersparse_tf.to_tfmot("model.keras", masks)


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda m: m.pop("dense/kernel"), "no mask for the prunable weight 'dense"),
        (
            lambda m: m.update({"bn/moving_mean": np.ones(4, bool)}),
            "key 'bn/moving_mean' names",
        ),
        (
            lambda m: m.update({"conv/kernel": np.ones((3, 3, 4, 3), bool)}),
            r"mask of 'conv/kernel' has shape \(3, 3, 4, 3\)",
        ),
    ],
)
def test_to_tfmot_bad_masks_name_the_key(change, message):
    twin = tf_keras_mixed_model()
    masks = hypersparse_tf.global_magnitude_masks(twin, 0.5)
    change(masks)
    with pytest.raises(ValueError, match=message):
        hypersparse_tf.to_tfmot(twin, masks)


def test_to_tfmot_subclassed_model_refused():
    class Subclassed(tf_keras.Model):
        def __init__(self):
            super().__init__(name="sub")
            self.dense = tf_keras.layers.Dense(2, name="dense")

        def call(self, x):
            return self.dense(x)

    model = Subclassed()
    model(np.ones((1, 3), "float32"))
    masks = hypersparse_tf.global_magnitude_masks(model, 0.5)
    with pytest.raises(ValueError, match="Sequential and functional"):
        hypersparse_tf.to_tfmot(model, masks)


def test_to_tfmot_without_tfmot_names_the_extra(monkeypatch):
    twin = tf_keras_mixed_model()
    masks = hypersparse_tf.global_magnitude_masks(twin, 0.5)
    monkeypatch.setitem(sys.modules, "tensorflow_model_optimization", None)
    with pytest.raises(ImportError, match=r'pip install "hypersparse_tf\[tfmot\]"'):
        hypersparse_tf.to_tfmot(twin, masks)


def test_example_tfmot_pqat_int8_flatbuffer_keeps_the_mask(tmp_path):
    # A process of its own: the script's absl flags would clash with other
    # example scripts loaded by the tests, and it imports tfmot.
    script = os.path.join(ROOT, "examples", "tfmot_pqat.py")
    flags = "--warmup_epochs=3 --finetune_epochs=2 --tfmot_epochs=1 --qat_epochs=2"
    out = subprocess.run(
        [sys.executable, script, *flags.split(), f"--output_dir={tmp_path}"],
        capture_output=True,
        text=True,
        timeout=600,
        env=dict(os.environ, PYTHONPATH=ROOT),
    )
    assert out.returncode == 0, out.stderr[-3000:]
    with open(tmp_path / "results.json") as f:
        results = json.load(f)
    assert "sparsity of the int8 weights in the flatbuffer" in out.stdout
    assert os.path.getsize(tmp_path / "model_int8.tflite") == results["tflite_bytes"]
    assert [r["key"] for r in results["weights"]] == [
        "conv/kernel",
        "hidden/kernel",
        "logits/kernel",
    ]
    size = sum(int(np.prod(r["shape"])) for r in results["weights"])
    mask_zeros = sum(r["mask_zeros"] for r in results["weights"])
    assert mask_zeros == math.floor(0.9 * size)
    assert results["mask_sparsity"] == mask_zeros / size
    # Every masked weight is 0 in the int8 flatbuffer. Kept weights that the
    # first conversion rounded to 0 (each below half an int8 step) were lifted
    # to one step, so the int8 zeros are exactly the mask's.
    assert results["masked_weights_all_zero_in_int8"]
    assert all(r["masked_nonzero"] == 0 for r in results["weights"])
    assert results["rounding_explained_before_lift"]
    assert (
        results["kept_weights_lifted"]
        == (results["kept_weights_rounded_to_zero_before_lift"])
    )
    assert results["kept_weights_rounded_to_zero"] == 0
    int8_zeros = sum(r["int8_zeros"] for r in results["weights"])
    assert int8_zeros == mask_zeros
    assert results["int8_sparsity"] == results["mask_sparsity"]
    assert results["kept_weights_lifted"] <= 0.01 * (size - mask_zeros)
    assert results["int8_test_accuracy"] >= 0.8
    assert abs(results["int8_test_accuracy"] - results["qat_test_accuracy"]) <= 0.02


def test_tfmot_pruned_weight_names(tfmot):
    # `_keras_compat` reads tfmot's registry of layers (a private method).
    from hypersparse_tf import _keras_compat

    dense = tf_keras.layers.Dense(2)
    depthwise = tf_keras.layers.DepthwiseConv2D(3)
    dense.build((None, 4))
    depthwise.build((None, 8, 8, 3))
    assert _keras_compat.tfmot_pruned_weight_names(dense) == ["kernel"]
    assert _keras_compat.tfmot_pruned_weight_names(depthwise) == []
    assert _keras_compat.tfmot_pruned_weight_names(tf_keras.layers.Layer()) is None


def test_to_tfmot_takes_channel_masks_with_their_batchnorm(tfmot):
    keras3 = hypersparse_tf.models.small_cnn(input_shape=(8, 8, 3))
    twin = hypersparse_tf.models.small_cnn(input_shape=(8, 8, 3), flavour="tf_keras")
    conv = keras3.get_layer("block1_conv")  # smaller: both blocks lose channels
    conv.kernel.assign(conv.kernel.numpy() * 0.3)
    copy_weights_by_layer_name(keras3, twin)
    masks = hypersparse_tf.global_magnitude_masks(keras3, 0.5, structure="channel")
    assert "block1_bn/beta" in masks
    pruned = hypersparse_tf.to_tfmot(twin, masks)
    pruned.compile(optimizer=tf_keras.optimizers.SGD(0.1, momentum=0.9), loss="mse")
    x, _ = _data()
    y = np.random.default_rng(3).normal(size=(len(x), 10)).astype("float32")
    pruned.fit(
        x,
        y,
        batch_size=8,
        epochs=2,
        callbacks=[tfmot.sparsity.keras.UpdatePruningStep()],
        verbose=0,
    )
    final = tfmot.sparsity.keras.strip_pruning(pruned)
    for block in (1, 2):
        gone = ~masks[f"block{block}_conv/kernel"].any(axis=(0, 1, 2))
        assert gone.any()
        gamma, beta = final.get_layer(f"block{block}_bn").get_weights()[:2]
        assert np.all(gamma[gone] == 0) and np.all(beta[gone] == 0)
        assert np.all(beta[~gone] != 0)
