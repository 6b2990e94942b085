"""The regularizers, masks and ART on tf_keras (Keras 2) models.

Every tf_keras model here is the twin of a Keras 3 test model (same layers, same
names, same weights), so where the behaviour is the same the tests check that
both flavours give the same numbers; the Keras 3 numbers are checked against
the reference in the other test files.
"""

import math
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

import hypersparse_tf
from tests.art_helpers import FAST
from tests.art_helpers import art_setup
from tests.art_helpers import bn_mlp
from tests.art_helpers import digits
from tests.art_helpers import interrupter
from tests.art_helpers import num_kernel_weights
from tests.conftest import MIXED_KEYS
from tests.conftest import assert_sparsity
from tests.conftest import copy_weights_by_layer_name
from tests.conftest import mixed_model
from tests.tf_keras_helpers import masked_weights_are_zero
from tests.tf_keras_helpers import tf_keras
from tests.tf_keras_helpers import tf_keras_art_setup
from tests.tf_keras_helpers import tf_keras_compiled
from tests.tf_keras_helpers import tf_keras_fit
from tests.tf_keras_helpers import tf_keras_mixed_model
from tests.tf_keras_helpers import tf_keras_mlp

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _values(model):
    return {k: w.numpy() for k, w in hypersparse_tf.prunable_weights(model).items()}


def _loss_and_gradients(model, kernels):
    with tf.GradientTape() as tape:
        loss = tf.add_n(model.losses)
    return loss.numpy(), [g.numpy() for g in tape.gradient(loss, kernels)]


# ----------------------------------------------------------------- masks


def test_prunable_weights_tf_keras_keys_match_keras_3():
    keras3, twin = mixed_model(), tf_keras_mixed_model()
    weights = hypersparse_tf.prunable_weights(twin)
    # The tf_keras DepthwiseConv2D kernel is named `depthwise_kernel` but keyed
    # as in Keras 3, so that masks fit both.
    assert list(weights) == MIXED_KEYS
    assert weights["depthwise/kernel"] is twin.get_layer("depthwise").depthwise_kernel
    for key, value in _values(keras3).items():
        np.testing.assert_array_equal(weights[key].numpy(), value)


@pytest.mark.parametrize("prune_rate", [0.5, 0.9])
def test_masks_tf_keras_match_keras_3_and_fit_the_twin(prune_rate):
    keras3, twin = mixed_model(), tf_keras_mixed_model()
    masks = hypersparse_tf.global_magnitude_masks(keras3, prune_rate)
    twin_masks = hypersparse_tf.global_magnitude_masks(twin, prune_rate)
    assert list(twin_masks) == list(masks)
    for key in masks:
        np.testing.assert_array_equal(twin_masks[key], masks[key])
    # Masks found on the Keras 3 model go to the tf_keras twin as they are.
    hypersparse_tf.apply_masks(keras3, masks)
    hypersparse_tf.apply_masks(twin, masks)
    assert_sparsity(twin, math.floor(prune_rate * num_kernel_weights(twin)))
    for key, value in _values(keras3).items():
        np.testing.assert_array_equal(_values(twin)[key], value)
    assert hypersparse_tf.sparsity(twin) == hypersparse_tf.sparsity(keras3)
    assert hypersparse_tf.sparsity_report(twin) == hypersparse_tf.sparsity_report(
        keras3
    )


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda m: m.pop("separable/pointwise_kernel"), "'separable/pointwise"),
        (lambda m: m.update({"bn/moving_mean": np.ones(4, bool)}), "bn/moving_mean"),
        (lambda m: m.update({"depthwise/kernel": np.ones(3, bool)}), "'depthwise/k"),
    ],
)
def test_apply_masks_tf_keras_bad_masks_name_the_key(change, message):
    twin = tf_keras_mixed_model()
    masks = hypersparse_tf.global_magnitude_masks(twin, 0.9)
    change(masks)
    before = [w.numpy() for w in twin.weights]
    with pytest.raises(ValueError, match=message):
        hypersparse_tf.apply_masks(twin, masks)
    for old, weight in zip(before, twin.weights, strict=True):
        np.testing.assert_array_equal(old, weight.numpy())


# ----------------------------------------------------------- regularizers


@pytest.mark.parametrize("name", ["hypersparse", "l1", "l2"])
def test_regularizers_tf_keras_loss_and_gradients_match_keras_3(name):
    make = {
        "hypersparse": lambda: hypersparse_tf.HyperSparse(prune_rate=0.9),
        "l1": hypersparse_tf.AdaptiveL1,
        "l2": hypersparse_tf.AdaptiveL2,
    }[name]
    results = []
    kernels3 = hypersparse_tf.prunable_weights(mixed_model()).values()
    values = [k.numpy().astype(np.float64) for k in kernels3]
    expected = 0.01 * sum(
        np.sum(np.square(v)) if name == "l2" else np.sum(np.abs(v)) for v in values
    )
    for model in (mixed_model(), tf_keras_mixed_model()):
        reg = make()
        kernels = hypersparse_tf.attach(model, reg)
        reg.coefficient.assign(0.01)
        reg.update_statistics()
        names = [n for n in ("threshold", "scale", "ratio") if hasattr(reg, n)]
        statistics = [float(getattr(reg, n).numpy()) for n in names]
        results.append((statistics, *_loss_and_gradients(model, kernels)))
    (stats3, loss3, grads3), (stats2, loss2, grads2) = results
    assert stats2 == stats3
    np.testing.assert_allclose(loss2, loss3, rtol=1e-6)
    np.testing.assert_allclose(loss3, expected, rtol=1e-5)  # lambda * A
    for g2, g3 in zip(grads2, grads3, strict=True):
        np.testing.assert_allclose(g2, g3, rtol=1e-6, atol=1e-12)


def test_attach_tf_keras_sets_layer_config_and_refuses_a_second_regularizer():
    twin = tf_keras_mixed_model()
    reg = hypersparse_tf.HyperSparse()
    kernels = hypersparse_tf.attach(twin, reg)
    assert reg.kernels == tuple(kernels) and len(twin.losses) == 5
    assert twin.get_layer("conv").kernel_regularizer is reg
    assert twin.get_layer("depthwise").depthwise_regularizer is reg
    assert twin.get_layer("separable").depthwise_regularizer is reg
    assert twin.get_layer("separable").pointwise_regularizer is reg
    assert twin.get_layer("dense").bias_regularizer is None
    assert list(hypersparse_tf.attached_weights(twin, reg)) == MIXED_KEYS
    hypersparse_tf.attach(twin, reg)  # the same instance again: no new loss
    assert len(twin.losses) == 5

    l2 = tf_keras.regularizers.L2(1e-4)
    twin = tf_keras_mixed_model(kernel_regularizer=l2)
    with pytest.raises(ValueError, match="'conv/kernel' already has the regularizer"):
        hypersparse_tf.attach(twin, hypersparse_tf.HyperSparse())
    assert twin.get_layer("dense").kernel_regularizer is None
    assert len(twin.losses) == 1


def test_regularizer_tf_keras_given_at_construction_and_in_fit():
    reg = hypersparse_tf.AdaptiveL1()
    model = tf_keras.Sequential(
        [
            tf_keras.Input((6,)),
            tf_keras.layers.Dense(5, name="a", kernel_regularizer=reg),
            tf_keras.layers.Dense(4, name="b", kernel_regularizer=reg),
        ]
    )
    assert list(hypersparse_tf.attached_weights(model, reg)) == ["a/kernel", "b/kernel"]
    hypersparse_tf.attach(model, reg)  # same instance: accepted as is
    model.compile(optimizer=tf_keras.optimizers.SGD(0.0), loss="mse")
    x, y = np.ones((4, 6), "float32"), np.zeros((4, 4), "float32")
    first = model.evaluate(x, y, verbose=0)
    reg.coefficient.assign(1.0)  # no retrace needed: the variable is read
    second = model.evaluate(x, y, verbose=0)
    total = sum(np.abs(k.numpy()).sum() for k in reg.kernels)
    np.testing.assert_allclose(second - first, total, rtol=1e-4)


LOAD_SCRIPT = r"""
import sys
import numpy as np
import tensorflow as tf
import tf_keras
import hypersparse_tf
hypersparse_tf.register_with_tf_keras()
model = tf_keras.models.load_model(sys.argv[1])
regs = {id(r): r for layer in model.layers
        for r in [getattr(layer, a, None) for a in
                  ("kernel_regularizer", "depthwise_regularizer",
                   "pointwise_regularizer")] if r is not None}
(reg,) = regs.values()
kernels = hypersparse_tf.attach(model, reg)
reg.update_statistics()
with tf.GradientTape() as tape:
    loss = tf.add_n(model.losses)
grads = tape.gradient(loss, kernels)
print(type(reg).__name__, reg.prune_rate, float(reg.coefficient.numpy()))
print(",".join(hypersparse_tf.attached_weights(model, reg)))
np.save(sys.argv[2], np.concatenate([np.ravel(g) for g in grads]))
"""


def test_tf_keras_file_round_trip_shares_one_regularizer(tmp_path):
    twin = tf_keras_mixed_model()
    reg = hypersparse_tf.HyperSparse(prune_rate=0.85, coefficient=0.02)
    kernels = hypersparse_tf.attach(twin, reg)
    path = str(tmp_path / "model.keras")
    twin.save(path)
    reg.update_statistics()
    _, grads = _loss_and_gradients(twin, kernels)
    # A new process, which must register the classes with tf_keras itself.
    out = subprocess.run(
        [sys.executable, "-c", LOAD_SCRIPT, path, str(tmp_path / "grads.npy")],
        capture_output=True,
        text=True,
        timeout=300,
        env=dict(os.environ, PYTHONPATH=ROOT),
    )
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.strip().splitlines()
    assert lines[-2].split() == ["HyperSparse", "0.85", str(np.float32(0.02).item())]
    assert lines[-1].split(",") == MIXED_KEYS
    np.testing.assert_allclose(
        np.load(tmp_path / "grads.npy"),
        np.concatenate([np.ravel(g) for g in grads]),
        rtol=1e-6,
    )


# -------------------------------------------------------------------- ART


class _RecordRate(tf_keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.rates = []

    def on_epoch_begin(self, epoch, logs=None):
        self.rates.append(float(self.model.optimizer.learning_rate))


class _CheckMaskEveryStep(tf_keras.callbacks.Callback):
    """Counts fine-tuning steps after which a masked weight is not 0."""

    def __init__(self, art):
        super().__init__()
        self.art = art
        self.steps = self.failures = 0

    def on_train_batch_end(self, batch, logs=None):
        if self.art.phase == "finetune":
            self.steps += 1
            self.failures += not masked_weights_are_zero(self.model, self.art.masks)


@pytest.fixture(scope="module")
def keras3_reference():
    model, _, art = art_setup(0.9)
    x_train, _, y_train, _ = digits()
    model.fit(
        x_train,
        y_train,
        batch_size=64,
        epochs=200,
        shuffle=False,
        callbacks=[art],
        verbose=0,
    )
    assert art.phase == "done"
    return model, art


def _assert_same_run(model, art, reference_model, reference_art):
    assert art.phase == "done"
    assert art.termination_epoch == reference_art.termination_epoch
    assert art.best_candidate_epoch == reference_art.best_candidate_epoch
    assert [h["phase"] for h in art.history] == [
        h["phase"] for h in reference_art.history
    ]
    for name in ("coefficient", "accuracy", "pruned_accuracy", "sparsity"):
        np.testing.assert_allclose(
            [h[name] for h in art.history],
            [h[name] for h in reference_art.history],
            rtol=1e-5,
            atol=1e-6,
        )
    for key in reference_art.masks:
        np.testing.assert_array_equal(art.masks[key], reference_art.masks[key])
    for a, b in zip(model.get_weights(), reference_model.get_weights(), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5)


def test_art_tf_keras_matches_keras_3(keras3_reference, tmp_path):
    model, reg, art = tf_keras_art_setup(0.9)
    rates, check = _RecordRate(), _CheckMaskEveryStep(art)
    csv = str(tmp_path / "log.csv")
    history = tf_keras_fit(
        model, art, callbacks=[rates, check, tf_keras.callbacks.CSVLogger(csv)]
    )
    _assert_same_run(model, art, *keras3_reference)
    n = num_kernel_weights(model)
    assert_sparsity(model, math.floor(0.9 * n))
    assert reg.coefficient.numpy() == 0.0
    # The mask holds after every fine-tuning step, not only at the end.
    steps = math.ceil(len(digits()[0]) / 64)
    assert check.steps == FAST["finetune_epochs"] * steps and check.failures == 0
    # Logs reach later callbacks; the optimizer restarts for fine-tuning with
    # the learning rate dropping x0.1 at 50% and 75%.
    logged = history.history
    assert logged["hypersparse_coefficient"] == [h["coefficient"] for h in art.history]
    assert logged["sparsity"] == [h["sparsity"] for h in art.history]
    header = open(csv).readline().strip().split(",")
    assert {"hypersparse_coefficient", "pruned_accuracy", "sparsity"} <= set(header)
    np.testing.assert_allclose(rates.rates[-4:], [0.1, 0.1, 0.01, 0.001], rtol=1e-6)
    assert int(model.optimizer.iterations.numpy()) == 4 * steps


def test_art_tf_keras_legacy_optimizer_and_adaptive_l1():
    model, _, art = tf_keras_art_setup(
        0.9,
        regularizer=hypersparse_tf.AdaptiveL1(),
        lambda_init=1e-3,
        eta=1.5,
    )
    model.compile(
        optimizer=tf_keras.optimizers.legacy.SGD(0.05, momentum=0.9),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    rates = _RecordRate()
    tf_keras_fit(model, art, callbacks=[rates])
    assert art.phase == "done"
    assert_sparsity(model, math.floor(0.9 * num_kernel_weights(model)))
    assert masked_weights_are_zero(model, art.masks)
    np.testing.assert_allclose(rates.rates[-4:], [0.05, 0.05, 0.005, 0.0005], rtol=1e-6)


@pytest.mark.parametrize("with_keras_backup", [False, True])
def test_art_tf_keras_resume_after_interruption(
    keras3_reference, tmp_path, with_keras_backup
):
    interrupt_at = FAST["warmup_epochs"] + 3  # during ART

    def callbacks(extra=()):
        if not with_keras_backup:
            return list(extra)
        backup = tf_keras.callbacks.BackupAndRestore(str(tmp_path / "keras"))
        return [*extra, backup]

    model, _, art = tf_keras_art_setup(0.9, backup_dir=str(tmp_path / "art"))
    with pytest.raises(RuntimeError, match="interrupted"):
        tf_keras_fit(
            model, art, callbacks=callbacks([interrupter(interrupt_at, tf_keras)])
        )
    assert art.phase == "art"

    # A new process: new model, regularizer and callback, same folders.
    model, _, art = tf_keras_art_setup(0.9, seed=1, backup_dir=str(tmp_path / "art"))
    history = tf_keras_fit(model, art, callbacks=callbacks())
    assert history.epoch[0] == interrupt_at  # the fit goes on where it stopped
    _assert_same_run(model, art, *keras3_reference)
    assert not os.path.exists(tmp_path / "art")
    assert getattr(model, "_training_state", None) is None


def test_art_tf_keras_accuracy_metric_found_or_missing():
    model, _, art = tf_keras_art_setup(0.9, finetune_epochs=1)
    model.compile(
        optimizer="sgd",
        loss="sparse_categorical_crossentropy",
        metrics=[tf_keras.metrics.SparseCategoricalAccuracy(name="acc_top1")],
    )
    history = tf_keras_fit(model, art, epochs=1)
    assert art.history[0]["accuracy"] == history.history["acc_top1"][0]
    model = tf_keras_compiled(tf_keras_mlp(), metrics=())
    reg = hypersparse_tf.HyperSparse(0.9)
    hypersparse_tf.attach(model, reg)
    x_train, _, y_train, _ = digits()
    art = hypersparse_tf.ART(reg, (x_train, y_train))
    with pytest.raises(ValueError, match="no accuracy metric"):
        tf_keras_fit(model, art, epochs=1)
    assert int(model.optimizer.iterations.numpy()) == 0


def test_art_callback_of_the_wrong_flavour_says_what_to_do():
    x_train, _, y_train, _ = digits()
    model, _, art = tf_keras_art_setup(0.9)
    adapter = art.for_tf_keras()
    assert isinstance(adapter, tf_keras.callbacks.Callback)
    assert art.for_tf_keras() is adapter and adapter.art is art
    with pytest.raises(TypeError, match=r"Pass `art.for_tf_keras\(\)`"):
        model.fit(x_train, y_train, epochs=1, callbacks=[art], verbose=0)
    keras3, _, art = art_setup(0.9)
    with pytest.raises(TypeError, match="is a Keras 3 model: pass the `ART`"):
        keras3.fit(x_train, y_train, epochs=1, callbacks=[art.for_tf_keras()])
    assert int(keras3.optimizer.iterations.numpy()) == 0


def test_pruned_accuracy_tf_keras_recalibrates_batchnorm_as_keras_3():
    keras3 = bn_mlp()
    x_train, _, y_train, _ = digits()
    keras3.fit(x_train, y_train, epochs=2, batch_size=64, verbose=0)
    twin = copy_weights_by_layer_name(keras3, bn_mlp(module=tf_keras))
    masks = hypersparse_tf.global_magnitude_masks(keras3, 0.9)
    accuracies = {}
    for name, model in (("keras3", keras3), ("tf_keras", twin)):
        before = [w.copy() for w in model.get_weights()]
        accuracies[name] = hypersparse_tf.pruned_accuracy(
            model, masks, (x_train, y_train), recalibrate_batchnorm=200
        )
        for a, b in zip(model.get_weights(), before, strict=True):
            np.testing.assert_array_equal(a, b)
        accuracies[name + "_stale"] = hypersparse_tf.pruned_accuracy(
            model, masks, (x_train, y_train)
        )
    tolerance = 2 / len(y_train)
    assert accuracies["tf_keras"] == pytest.approx(accuracies["keras3"], abs=tolerance)
    assert accuracies["tf_keras_stale"] == pytest.approx(
        accuracies["keras3_stale"], abs=tolerance
    )
    assert abs(accuracies["keras3"] - accuracies["keras3_stale"]) > tolerance


def test_art_tf_keras_model_saved_during_finetuning_keeps_its_mask(tmp_path):
    from tests.test_masks import _train_loaded

    model, _, art = tf_keras_art_setup(0.9)
    path = str(tmp_path / "finetuning.keras")

    class Save(tf_keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if art.phase == "finetune" and not os.path.exists(path):
                self.model.save(path)

    tf_keras_fit(model, art, callbacks=[Save()])
    assert art.phase == "done" and os.path.exists(path)
    zeros, same_zeros, trained = _train_loaded(path, "tf_keras")
    assert zeros == math.floor(0.9 * num_kernel_weights(model))
    assert same_zeros and trained
