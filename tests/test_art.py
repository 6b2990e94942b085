import math
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

import hypersparse_tf
from hypersparse_tf import _keras_compat
from tests.art_helpers import FAST
from tests.art_helpers import art_setup
from tests.art_helpers import bn_mlp
from tests.art_helpers import compiled
from tests.art_helpers import digits
from tests.art_helpers import fit_digits as _fit
from tests.art_helpers import interrupter
from tests.art_helpers import mlp
from tests.art_helpers import num_kernel_weights
from tests.conftest import assert_sparsity


def _assert_masked_weights_are_zero(model, masks):
    for key, weight in hypersparse_tf.prunable_weights(model).items():
        value = weight.numpy()
        assert np.all(value[~masks[key]] == 0), key


@pytest.mark.parametrize("prune_rate", [0.9, 0.98])
def test_art_end_to_end_on_digits(prune_rate):
    model, reg, art = art_setup(prune_rate)
    _fit(model, art)
    assert art.phase == "done"
    n = num_kernel_weights(model)
    assert_sparsity(model, math.floor(prune_rate * n))
    _assert_masked_weights_are_zero(model, art.masks)
    assert reg.coefficient.numpy() == 0.0
    phases = [h["phase"] for h in art.history]
    art_epochs = phases.count("art")
    assert phases == (
        ["warmup"] * 3 + ["art"] * art_epochs + ["finetune"] * FAST["finetune_epochs"]
    )
    assert art.art_epochs_done == art_epochs
    assert art.termination_epoch == 3 + art_epochs - 1
    _, x_test, _, y_test = digits()
    accuracy = model.evaluate(x_test, y_test, verbose=0)[1]
    assert accuracy >= {0.9: 0.90, 0.98: 0.60}[prune_rate]


def test_art_coefficient_table_and_logs(tmp_path):
    model, reg, art = art_setup(0.9)
    csv = str(tmp_path / "log.csv")
    history = _fit(model, art, callbacks=[keras.callbacks.CSVLogger(csv)])
    for entry in art.history:
        if entry["phase"] == "art":
            e = entry["epoch"] - FAST["warmup_epochs"]
            expected = FAST["lambda_init"] * FAST["eta"] ** e
            assert entry["coefficient"] == pytest.approx(expected, rel=1e-12)
            # A share of the 1,437 training samples, as the logs have it.
            correct = entry["pruned_accuracy"] * len(digits()[0])
            assert correct == pytest.approx(round(correct), abs=1e-9)
        else:
            assert entry["coefficient"] == 0.0
            assert math.isnan(entry["pruned_accuracy"])
    logged = history.history
    assert logged["hypersparse_coefficient"] == [h["coefficient"] for h in art.history]
    assert logged["sparsity"] == [h["sparsity"] for h in art.history]
    np.testing.assert_equal(
        logged["pruned_accuracy"], [h["pruned_accuracy"] for h in art.history]
    )
    header = open(csv).readline().strip().split(",")
    assert {"hypersparse_coefficient", "pruned_accuracy", "sparsity"} <= set(header)
    n = num_kernel_weights(model)
    finetune = [h for h in art.history if h["phase"] == "finetune"]
    assert all(h["sparsity"] == math.floor(0.9 * n) / n for h in finetune)


def test_art_statistics_refreshed_every_step_during_art():
    model, reg, art = art_setup(0.9, warmup_epochs=0, finetune_epochs=1)
    calls = []
    original = reg.update_statistics

    def update_statistics():
        original()
        magnitudes = np.sort(
            np.concatenate([np.abs(k.numpy()).ravel() for k in reg.kernels])
        )
        calls.append((float(reg.threshold.numpy()), magnitudes))

    reg.update_statistics = update_statistics
    _fit(model, art, epochs=2)
    x_train = digits()[0]
    assert len(calls) == 2 * math.ceil(len(x_train) / 64)
    # Each refresh saw the kernels of that step: the exact quantile, changing.
    for threshold, magnitudes in calls:
        assert threshold == magnitudes[math.floor(0.9 * magnitudes.size)]
    assert len({threshold for threshold, _ in calls}) > len(calls) // 2


def _hand_fed_art(buffer_size=1):
    model = compiled(mlp())
    reg = hypersparse_tf.HyperSparse(0.5)
    hypersparse_tf.attach(model, reg)
    x_train, _, y_train, _ = digits()
    art = hypersparse_tf.ART(
        reg, (x_train[:10], y_train[:10]), warmup_epochs=0, buffer_size=buffer_size
    )
    art.set_model(model)
    art.on_train_begin()
    return model, art


def _feed(model, art, pruned, dense=1.0):
    weights = [
        np.full(w.shape, float(art.epochs_seen + 1), "float32") for w in model.weights
    ]
    masks = hypersparse_tf.global_magnitude_masks(model, 0.5)
    art.record_art_epoch(pruned, dense, weights, masks)
    art.epochs_seen += 1
    return weights, masks


def test_art_buffer_and_stopping_rule_on_hand_fed_accuracies():
    model, art = _hand_fed_art(buffer_size=1)
    _feed(model, art, 0.5)  # buffer [0.5] -> mean 0.5, best = epoch 0
    assert art.best_candidate_epoch == 0 and art.best_mean_pruned_accuracy == 0.5
    _feed(model, art, 0.7)  # [0.5, 0.7] -> 0.6 > 0.5, middle = epoch 1
    assert art.best_candidate_epoch == 1
    assert art.best_mean_pruned_accuracy == pytest.approx(0.6)
    _feed(model, art, 0.3)  # [0.5, 0.7, 0.3] -> 0.5 < 0.7 (epoch 1's own)
    _feed(model, art, 0.95)  # [0.7, 0.3, 0.95] -> 0.65 < 0.7
    assert art.best_candidate_epoch == 1
    assert art.buffer == [(1, 0.7), (2, 0.3), (3, 0.95)]
    assert art.phase == "art"
    weights, masks = _feed(model, art, 0.95, dense=0.7)  # 0.7333 > 0.7 twice
    assert art.best_candidate_epoch == 3
    assert art.phase == "finetune" and art.termination_epoch == 4
    # Fine-tuning starts from the best candidate (epoch 3: weights all 4.0).
    for key, weight in hypersparse_tf.prunable_weights(model).items():
        np.testing.assert_array_equal(weight.numpy(), np.where(art.masks[key], 4.0, 0))
    bias = model.get_layer("d1").bias.numpy()
    np.testing.assert_array_equal(bias, np.full(bias.shape, 4.0))


def test_art_buffer_size_zero_keeps_single_epochs():
    model, art = _hand_fed_art(buffer_size=0)
    for pruned in [0.2, 0.6, 0.4]:
        _feed(model, art, pruned)
    assert art.buffer == [(2, 0.4)]
    assert art.best_candidate_epoch == 1 and art.best_mean_pruned_accuracy == 0.6


def test_art_resets_optimizer_and_drops_learning_rate():
    model, _, art = art_setup(0.9, finetune_epochs=8)
    rates = []

    class RecordRate(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            rates.append(float(self.model.optimizer.learning_rate))

    model.optimizer.learning_rate = 0.05
    _fit(model, art, callbacks=[RecordRate()])
    assert art.phase == "done"
    finetune = [
        r for r, h in zip(rates, art.history, strict=True) if h["phase"] == "finetune"
    ]
    np.testing.assert_allclose(finetune, [0.05] * 4 + [0.005] * 2 + [0.0005] * 2)
    steps = math.ceil(len(digits()[0]) / 64)
    assert int(model.optimizer.iterations.numpy()) == 8 * steps


def test_art_finetune_schedule_and_zero_finetune_epochs():
    model, _, art = art_setup(0.9, finetune_epochs=0)
    _fit(model, art)
    assert art.phase == "done" and art.history[-1]["phase"] == "art"
    assert_sparsity(model, math.floor(0.9 * num_kernel_weights(model)))
    model, _, art = art_setup(
        0.9, finetune_epochs=2, finetune_schedule=lambda e, lr: lr / (e + 2)
    )
    rates = []

    class RecordRate(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            rates.append(float(self.model.optimizer.learning_rate))

    _fit(model, art, callbacks=[RecordRate()])
    np.testing.assert_allclose(rates[-2:], [0.05, 0.1 / 3], rtol=1e-6)


def test_art_epoch_budget_stops_art_and_fills_the_budget_with_finetuning():
    # eta barely above 1: the rule cannot fire within 9 ART epochs, so the
    # budget ends ART after warm-up 3 + 9 ART epochs, with 4 fine-tuning left.
    model, _, art = art_setup(
        0.9, lambda_init=1e-9, eta=1.0001, finetune_epochs=4, epoch_budget=16
    )
    rates = []

    class RecordRate(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            rates.append(float(self.model.optimizer.learning_rate))

    _fit(model, art, callbacks=[RecordRate()])
    phases = [h["phase"] for h in art.history]
    assert phases == ["warmup"] * 3 + ["art"] * 9 + ["finetune"] * 4
    assert art.phase == "done" and art.stopped_by_budget
    assert art.termination_epoch == 11 and art.finetune_length == 4
    best = art.best_candidate_epoch
    assert 3 <= best <= 11
    assert_sparsity(model, math.floor(0.9 * num_kernel_weights(model)))
    _assert_masked_weights_are_zero(model, art.masks)
    np.testing.assert_allclose(rates[-4:], [0.1, 0.1, 0.01, 0.001], rtol=1e-6)


def test_art_epoch_budget_gives_early_termination_a_longer_finetuning():
    model, _, art = art_setup(0.9, finetune_epochs=4)
    _fit(model, art)
    art_epochs = art.art_epochs_done
    assert not art.stopped_by_budget and art.finetune_length == 4
    budget = 3 + art_epochs + 10
    model, _, art = art_setup(0.9, finetune_epochs=4, epoch_budget=budget)
    rates = []

    class RecordRate(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            rates.append(float(self.model.optimizer.learning_rate))

    _fit(model, art, callbacks=[RecordRate()])
    assert art.art_epochs_done == art_epochs and not art.stopped_by_budget
    assert art.finetune_length == 10 and len(art.history) == budget
    np.testing.assert_allclose(
        rates[-10:], [0.1] * 5 + [0.01] * 3 + [0.001] * 2, rtol=1e-6
    )


def test_art_keeps_a_fix_masks_mask_of_the_user():
    model = compiled(mlp())
    rng = np.random.default_rng(0)
    fixed = {
        key: rng.random(w.shape) < 0.5
        for key, w in hypersparse_tf.prunable_weights(model).items()
    }
    hypersparse_tf.fix_masks(model, fixed)
    model, _, art = art_setup(0.9, model=model, warmup_epochs=4)
    _fit(model, art, epochs=4)  # ART's own mask (all ones) is installed
    assert art.phase == "art"
    for key, weight in hypersparse_tf.prunable_weights(model).items():
        value = weight.numpy()
        assert np.all(value[~fixed[key]] == 0)
        assert np.count_nonzero(value[fixed[key]]) > 0.9 * fixed[key].sum()


@pytest.mark.parametrize("samples", [0, 300])
def test_art_recalibrated_batchnorm_kept_for_finetuning(samples):
    model = bn_mlp()
    x_train, _, y_train, _ = digits()
    reg = hypersparse_tf.HyperSparse(0.9)
    hypersparse_tf.attach(model, reg)
    settings = dict(FAST, finetune_epochs=0, recalibrate_batchnorm=samples)
    art = hypersparse_tf.ART(reg, (x_train, y_train), **settings)
    _fit(model, art)
    assert art.phase == "done"
    best = next(e for e in art.history if e["epoch"] == art.best_candidate_epoch)
    assert best["phase"] == "art"
    bn = model.get_layer("bn")
    d1 = model.get_layer("d1")
    h = x_train.astype(np.float64) @ d1.kernel.numpy() + d1.bias.numpy()
    if samples:  # the moments of the pruned layer's output on the samples
        np.testing.assert_allclose(
            bn.moving_mean.numpy(), h[:samples].mean(axis=0), atol=1e-5
        )
        np.testing.assert_allclose(
            bn.moving_variance.numpy(), h[:samples].var(axis=0), rtol=1e-4, atol=1e-6
        )
    else:  # the best candidate's, from the dense network
        assert not np.allclose(bn.moving_mean.numpy(), h[:300].mean(axis=0), atol=1e-3)


@pytest.mark.parametrize("name", ["l1", "l2"])
def test_art_with_adaptive_l1_l2(name):
    reg = {"l1": hypersparse_tf.AdaptiveL1(), "l2": hypersparse_tf.AdaptiveL2()}[name]
    model, _, art = art_setup(0.9, regularizer=reg, lambda_init=1e-3, eta=1.5)
    _fit(model, art)
    assert art.phase == "done"
    assert_sparsity(model, math.floor(0.9 * num_kernel_weights(model)))
    _assert_masked_weights_are_zero(model, art.masks)


def test_art_continues_across_fit_calls():
    model, _, art = art_setup(0.9)
    _fit(model, art, epochs=4)
    assert art.phase == "art" and art.epochs_seen == 4
    _fit(model, art, epochs=200)
    assert art.phase == "done"
    one_model, _, one_art = art_setup(0.9)
    _fit(one_model, one_art)
    assert [h["phase"] for h in art.history] == [h["phase"] for h in one_art.history]
    for key in art.masks:
        np.testing.assert_array_equal(art.masks[key], one_art.masks[key])


def test_art_accuracy_metric_found_or_named():
    model, reg, art = art_setup(0.9, finetune_epochs=1)
    model.compile(
        optimizer="sgd",
        loss="sparse_categorical_crossentropy",
        metrics=[keras.metrics.SparseCategoricalAccuracy(name="acc_top1")],
    )
    history = _fit(model, art, epochs=1)
    assert art.history[0]["accuracy"] == history.history["acc_top1"][0]
    model, reg, art = art_setup(0.9, accuracy_metric="missing")
    with pytest.raises(KeyError, match="'missing'"):
        _fit(model, art, epochs=1)


@pytest.mark.parametrize("with_keras_backup", [False, True])
def test_art_resume_after_interruption(tmp_path, with_keras_backup):
    reference, _, reference_art = art_setup(0.9)
    _fit(reference, reference_art)
    assert reference_art.phase == "done"
    interrupt_at = FAST["warmup_epochs"] + 3  # during ART
    assert reference_art.history[interrupt_at]["phase"] == "art"

    def callbacks(extra=()):
        keras_backup = keras.callbacks.BackupAndRestore(str(tmp_path / "keras"))
        return [*extra, keras_backup] if with_keras_backup else list(extra)

    model, _, art = art_setup(0.9, backup_dir=str(tmp_path / "art"))
    with pytest.raises(RuntimeError, match="interrupted"):
        _fit(model, art, callbacks=callbacks([interrupter(interrupt_at)]))
    assert art.phase == "art"

    # A new process: new model, regularizer and callback, same folders.
    model, reg, art = art_setup(0.9, seed=1, backup_dir=str(tmp_path / "art"))
    _fit(model, art, callbacks=callbacks())
    assert art.phase == "done"
    assert art.termination_epoch == reference_art.termination_epoch
    assert art.best_candidate_epoch == reference_art.best_candidate_epoch
    np.testing.assert_equal(art.history, reference_art.history)  # NaN == NaN
    for key in art.masks:
        np.testing.assert_array_equal(art.masks[key], reference_art.masks[key])
    for a, b in zip(model.get_weights(), reference.get_weights(), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-6)
    assert not os.path.exists(tmp_path / "art")


class _DieAfterEpochEnd(keras.callbacks.Callback):
    """Dies in `on_epoch_end` of `at_epoch`, after ART (earlier in the list)
    wrote its backup: a kill between ART's backup and a later checkpoint."""

    def __init__(self, at_epoch):
        super().__init__()
        self.at_epoch = at_epoch

    def on_epoch_end(self, epoch, logs=None):
        if epoch == self.at_epoch:
            raise RuntimeError("killed")


class _ResumeOneEpochBehind(keras.callbacks.Callback):
    """Starts the resumed `fit` at `epoch`, as a `BackupAndRestore` whose
    checkpoint is one epoch older than ART's backup would."""

    def __init__(self, epoch):
        super().__init__()
        self.epoch = epoch

    def on_train_begin(self, logs=None):
        _keras_compat.set_initial_epoch(self.model, self.epoch)


def _by_epoch():
    """Training that depends on the trainer's epoch number (as shuffling by
    epoch does): a redone epoch would train differently."""
    return keras.callbacks.LearningRateScheduler(
        lambda epoch, lr: 0.1 if epoch % 2 == 0 else 0.03
    )


def test_art_resume_when_the_trainer_is_one_epoch_behind_its_backup(tmp_path):
    reference, _, reference_art = art_setup(0.9, finetune_epochs=0)
    _fit(reference, reference_art, callbacks=[_by_epoch()])
    killed_at = FAST["warmup_epochs"] + 3  # during ART
    model, _, art = art_setup(0.9, finetune_epochs=0, backup_dir=str(tmp_path / "a"))
    with pytest.raises(RuntimeError, match="killed"):
        _fit(model, art, callbacks=[_by_epoch(), _DieAfterEpochEnd(killed_at)])
    # ART's backup holds epoch `killed_at`; the trainer's checkpoint only the
    # epoch before: the resumed fit redoes epoch `killed_at`.
    model, _, art = art_setup(
        0.9, seed=1, finetune_epochs=0, backup_dir=str(tmp_path / "a")
    )
    _fit(model, art, callbacks=[_by_epoch(), _ResumeOneEpochBehind(killed_at)])
    assert art.phase == "done"
    assert art.termination_epoch == reference_art.termination_epoch
    np.testing.assert_equal(art.history, reference_art.history)
    for key in art.masks:
        np.testing.assert_array_equal(art.masks[key], reference_art.masks[key])


def test_art_bad_arguments():
    x_train, _, y_train, _ = digits()
    reg = hypersparse_tf.HyperSparse(0.9)
    data = (x_train, y_train)
    cases = [
        (dict(eval_data=None), "eval_data"),
        (dict(eval_data=(x_train[:0], y_train[:0])), "eval_data"),
        (dict(eval_data=(x_train, y_train[:5])), "eval_data"),
        (dict(eval_data=tf.data.Dataset.range(0)), "eval_data"),
        (dict(eval_data=x_train), "eval_data"),
        (dict(eta=1.0), "eta"),
        (dict(eta=0.9), "eta"),
        (dict(lambda_init=0.0), "lambda_init"),
        (dict(lambda_init=-1e-6), "lambda_init"),
        (dict(warmup_epochs=-1), "warmup_epochs"),
        (dict(finetune_epochs=-2), "finetune_epochs"),
        (dict(buffer_size=-1), "buffer_size"),
        (dict(warmup_epochs=1.5), "warmup_epochs"),
        (dict(prune_rate=0.8), "prune_rate"),
        (dict(prune_rate=1.2), "prune_rate"),
        # warm-up 60 + one ART epoch + fine-tuning 160 = 221 at least.
        (dict(epoch_budget=220), "epoch_budget"),
        (dict(epoch_budget=221.0), "epoch_budget"),
        (dict(epoch_budget=True), "epoch_budget"),
        (dict(recalibrate_batchnorm=-1), "recalibrate_batchnorm"),
        (dict(recalibrate_batchnorm=True), "recalibrate_batchnorm"),
    ]
    for kwargs, argument in cases:
        kwargs = dict({"eval_data": data}, **kwargs)
        with pytest.raises(ValueError, match=f"argument `{argument}`"):
            hypersparse_tf.ART(reg, **kwargs)
    with pytest.raises(ValueError, match="argument `prune_rate`"):
        hypersparse_tf.ART(hypersparse_tf.AdaptiveL1(), data)
    with pytest.raises(TypeError, match="argument `regularizer`"):
        hypersparse_tf.ART(keras.regularizers.L1(0.1), data)
    with pytest.raises(TypeError, match="argument `finetune_schedule`"):
        hypersparse_tf.ART(reg, data, finetune_schedule=0.1)


def test_art_errors_at_fit_start_change_nothing():
    x_train, _, y_train, _ = digits()
    model = compiled(mlp())
    before = [w.copy() for w in model.get_weights()]
    art = hypersparse_tf.ART(hypersparse_tf.HyperSparse(0.9), (x_train, y_train))
    with pytest.raises(ValueError, match="attached to no weight of model 'mlp'"):
        _fit(model, art, epochs=1)
    model = compiled(mlp(), metrics=())
    reg = hypersparse_tf.HyperSparse(0.9)
    hypersparse_tf.attach(model, reg)
    art = hypersparse_tf.ART(reg, (x_train, y_train))
    with pytest.raises(ValueError, match="no accuracy metric"):
        _fit(model, art, epochs=1)
    for a, b in zip(model.get_weights(), before, strict=True):
        np.testing.assert_array_equal(a, b)
    assert int(model.optimizer.iterations.numpy()) == 0


def test_art_get_config_is_flat():
    _, _, art = art_setup(0.9)
    config = art.get_config()
    assert config["prune_rate"] == 0.9 and config["eta"] == FAST["eta"]
    assert all(isinstance(v, (int, float, str, type(None))) for v in config.values())


MIRRORED_SCRIPT = r"""
import math
import sys
import numpy as np
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(
    cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import keras
import hypersparse_tf
sys.path.insert(0, sys.argv[1])
from tests.art_helpers import FAST, digits, mlp

def run(strategy, settings, epochs, optimizer):
    with strategy.scope():
        model = mlp(0)
        model.compile(optimizer=optimizer(), loss="sparse_categorical_crossentropy",
                      metrics=["accuracy"])
        reg = hypersparse_tf.HyperSparse(0.9)
        hypersparse_tf.attach(model, reg)
    x, _, y, _ = digits()
    art = hypersparse_tf.ART(reg, (x, y), **settings)
    replicas = []
    class Check(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            for variable in [reg.scale, reg.ratio, reg.coefficient,
                             *art._mask_variables.values()]:
                values = [v.numpy() for v in getattr(variable, "values", [variable])]
                replicas.append(len(values))
                for v in values[1:]:
                    np.testing.assert_array_equal(v, values[0])
    model.fit(x, y, batch_size=64, epochs=epochs, shuffle=False,
              callbacks=[art, Check()], verbose=0)
    return model, art, replicas

mirrored = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
one = tf.distribute.get_strategy()
# Three ART epochs with a strong coefficient and a small step: one device and
# two replicas must agree closely (a mis-scaled regularizer gradient would not).
short = dict(FAST, warmup_epochs=0, lambda_init=1e-2)
sgd = lambda: keras.optimizers.SGD(0.001)
m_model, m_art, replicas = run(mirrored, short, 3, sgd)
o_model, o_art, _ = run(one, short, 3, sgd)
# The same without a (noticeable) coefficient: how far the regularizer moves.
n_model, _, _ = run(one, dict(short, lambda_init=1e-12), 3, sgd)
print("replicas", min(replicas), max(replicas))
print("coefficients", [h["coefficient"] for h in m_art.history] ==
      [h["coefficient"] for h in o_art.history])
print("pruned", max(abs(a["pruned_accuracy"] - b["pruned_accuracy"])
      for a, b in zip(m_art.history, o_art.history)))
print("weights", max(float(np.abs(a - b).max())
      for a, b in zip(m_model.get_weights(), o_model.get_weights())))
print("effect", max(float(np.abs(a - b).max())
      for a, b in zip(n_model.get_weights(), o_model.get_weights())))
m_masks = hypersparse_tf.global_magnitude_masks(m_model, 0.9)
o_masks = hypersparse_tf.global_magnitude_masks(o_model, 0.9)
print("masks", sum(int((m_masks[k] != o_masks[k]).sum()) for k in m_masks))
# The whole method under the strategy.
momentum = lambda: keras.optimizers.SGD(0.1, momentum=0.9)
model, art, _ = run(mirrored, FAST, 200, momentum)
n = sum(int(np.prod(w.shape)) for w in hypersparse_tf.prunable_weights(model).values())
zeros = sum(int((w.numpy() == 0).sum())
            for w in hypersparse_tf.prunable_weights(model).values())
print("done", art.phase, zeros == math.floor(0.9 * n))
"""


def test_art_under_mirrored_strategy_matches_one_device():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run(
        [sys.executable, "-c", MIRRORED_SCRIPT, root],
        capture_output=True,
        text=True,
        timeout=600,
        env=dict(os.environ, PYTHONPATH=root),
    )
    assert out.returncode == 0, out.stderr[-3000:]
    lines = dict(line.split(" ", 1) for line in out.stdout.strip().splitlines())
    assert lines["replicas"] == "2 2"  # the state is mirrored, equal on both
    assert lines["coefficients"] == "True"
    assert float(lines["pruned"]) <= 1 / 1437  # at most one sample apart
    # Two replicas differ from one device by float rounding alone (~2e-5 here,
    # the same without the regularizer); a mis-scaled regularizer gradient
    # would differ by about its whole effect.
    assert float(lines["weights"]) < 1e-4
    assert float(lines["effect"]) > 10 * float(lines["weights"])
    assert lines["masks"] == "0"
    assert lines["done"] == "done True"


class _SaveInFinetuning(keras.callbacks.Callback):
    def __init__(self, art, path):
        super().__init__()
        self.art, self.path = art, path

    def on_epoch_end(self, epoch, logs=None):
        if self.art.phase == "finetune" and not os.path.exists(self.path):
            self.model.save(self.path)


def test_art_model_saved_during_finetuning_keeps_its_mask_after_loading(tmp_path):
    from tests.test_masks import _train_loaded

    model, _, art = art_setup(0.9)
    path = str(tmp_path / "finetuning.keras")
    _fit(model, art, callbacks=[_SaveInFinetuning(art, path)])
    assert art.phase == "done" and os.path.exists(path)
    zeros, same_zeros, trained = _train_loaded(path, "keras")
    assert zeros == math.floor(0.9 * num_kernel_weights(model))
    assert same_zeros and trained


class _PoisonKernel(keras.callbacks.Callback):
    """Puts a NaN into a kernel when epoch `at` begins."""

    def __init__(self, at):
        super().__init__()
        self.at = at

    def on_epoch_begin(self, epoch, logs=None):
        if epoch == self.at:
            kernel = self.model.get_layer("d1").kernel
            value = kernel.numpy()
            value[0, 0] = np.nan
            kernel.assign(value)


def test_art_divergence_during_art_leaves_the_best_finite_candidate(capsys):
    model, reg, art = art_setup(0.9, lambda_init=1e-9, eta=1.0001)
    poison_at = FAST["warmup_epochs"] + 2  # after two ART epochs
    history = _fit(model, art, callbacks=[_PoisonKernel(poison_at)])
    assert art.phase == "diverged" and art.diverged_epoch == poison_at
    assert len(history.history["loss"]) == poison_at + 1  # fit returned
    assert "training diverged (the regularized kernels hold NaN or inf)" in (
        capsys.readouterr().out
    )
    best = art.schedule.best
    assert best.epoch in (FAST["warmup_epochs"], FAST["warmup_epochs"] + 1)
    assert math.isfinite(best.pruned_accuracy)
    for weight, expected in zip(model.weights, best.payload["weights"], strict=True):
        value = weight.numpy()
        assert np.isfinite(value).all()
        key = next((k for k, w in art._kernels.items() if w is weight), None)
        if key is None:
            np.testing.assert_array_equal(value, expected)
        else:  # the candidate pruned with its mask
            np.testing.assert_array_equal(value, np.where(art.masks[key], expected, 0))
    assert_sparsity(model, math.floor(0.9 * num_kernel_weights(model)))
    assert reg.coefficient.numpy() == 0.0
    assert [h["phase"] for h in art.history][-1] == "diverged"


def test_art_divergence_in_warmup_leaves_the_last_finite_weights():
    model, _, art = art_setup(0.9)
    model.optimizer.learning_rate = 1e6  # explodes within the first epoch
    start = [w.copy() for w in model.get_weights()]
    _fit(model, art)
    assert art.phase == "diverged" and art.diverged_epoch == 0
    assert art.schedule.best is None and art.masks is None
    for a, b in zip(model.get_weights(), start, strict=True):
        np.testing.assert_array_equal(a, b)  # no epoch ended finite
