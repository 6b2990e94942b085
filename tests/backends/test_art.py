"""ART on the running Keras backend: all phases, masks enforced through
fine-tuning, per-step statistics, the pruned copy's accuracy.

Runs in every backend's own pytest process (`tests/run_backends.py`)."""

import math

import keras
import numpy as np
import pytest

import hypersparse_tf
from tests.art_helpers import FAST
from tests.art_helpers import art_setup
from tests.art_helpers import bn_mlp
from tests.art_helpers import compiled
from tests.art_helpers import digits
from tests.art_helpers import fit_digits
from tests.art_helpers import interrupter
from tests.art_helpers import mlp
from tests.art_helpers import num_kernel_weights
from tests.conftest import assert_sparsity


def functional_mlp(seed=0):
    """The 64-32-10 MLP of the ART tests, functional (`mlp` is Sequential)."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((64,))
    h = keras.layers.Dense(64, activation="relu", name="d1")(inputs)
    h = keras.layers.Dense(32, activation="relu", name="d2")(h)
    outputs = keras.layers.Dense(10, activation="softmax", name="out")(h)
    return keras.Model(inputs, outputs, name="mlp")


def _kernel_values(kernels):
    return [keras.ops.convert_to_numpy(k) for k in kernels]


@pytest.mark.parametrize(
    "build", [functional_mlp, mlp], ids=["functional", "sequential"]
)
def test_art_runs_every_phase_and_keeps_the_mask(build):
    x, x_test, y, y_test = digits()
    model, reg, art = art_setup(0.9, model=compiled(build()))
    kernels = list(reg.kernels)

    seen = []

    class Watch(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            seen.append(float(keras.ops.convert_to_numpy(reg.threshold)))

    model.fit(
        x,
        y,
        epochs=200,
        batch_size=64,
        shuffle=False,
        verbose=0,
        callbacks=[art, Watch()],
    )
    assert art.phase == "done"
    assert art.termination_epoch is not None
    values = _kernel_values(kernels)
    total = sum(v.size for v in values)
    zeros = sum(int(np.sum(v == 0)) for v in values)
    assert zeros == math.floor(0.9 * total)  # exactly the mask, after fine-tuning
    for key, value in zip(art.masks, values, strict=False):
        assert np.all(value[~art.masks[key]] == 0)
    # The statistics moved during ART (refreshed at every step).
    assert len(set(seen)) > 2
    accuracy = np.mean(np.argmax(model.predict(x_test, verbose=0), -1) == y_test)
    assert accuracy > 0.8


def test_pruned_accuracy_matches_a_masked_copy():
    x, _, y, _ = digits()
    model = bn_mlp()
    model.fit(x, y, epochs=2, batch_size=64, verbose=0)
    masks = hypersparse_tf.global_magnitude_masks(model, 0.8)
    before = [keras.ops.convert_to_numpy(w) for w in model.weights]
    score = hypersparse_tf.pruned_accuracy(model, masks, (x, y))
    for old, new in zip(before, model.weights, strict=True):
        np.testing.assert_array_equal(old, keras.ops.convert_to_numpy(new))
    hypersparse_tf.apply_masks(model, masks)
    expected = np.mean(np.argmax(model.predict(x, verbose=0), -1) == y)
    assert score == pytest.approx(expected, abs=1e-9)


def test_fix_masks_keeps_pruned_weights_zero_through_fit():
    x, _, y, _ = digits()
    model = compiled(functional_mlp())
    masks = hypersparse_tf.global_magnitude_masks(model, 0.75)
    hypersparse_tf.fix_masks(model, masks)
    model.fit(x, y, epochs=2, batch_size=64, verbose=0)
    weights = hypersparse_tf.prunable_weights(model)
    for key, weight in weights.items():
        value = keras.ops.convert_to_numpy(weight)
        assert np.all(value[~masks[key]] == 0)
        assert np.all(value[masks[key]] != 0)


def test_art_with_budget_recalibration_and_logs():
    x, _, y, _ = digits()
    model = bn_mlp()
    model, reg, art = art_setup(
        0.9, model=model, epoch_budget=12, recalibrate_batchnorm=128
    )
    history = model.fit(
        x, y, epochs=40, batch_size=64, shuffle=False, verbose=0, callbacks=[art]
    )
    assert art.phase == "done"
    assert len(history.history["loss"]) == 12  # the budget, in all
    assert [h["phase"] for h in art.history][:3] == ["warmup"] * 3
    assert {"hypersparse_coefficient", "pruned_accuracy", "sparsity"} <= set(
        history.history
    )
    assert_sparsity(model, math.floor(0.9 * num_kernel_weights(model)))


@pytest.mark.parametrize(
    "build", [functional_mlp, mlp], ids=["functional", "sequential"]
)
def test_art_resumes_from_its_backup_as_if_never_interrupted(tmp_path, build):
    reference, _, reference_art = art_setup(0.9, model=compiled(build()))
    fit_digits(reference, reference_art)
    assert reference_art.phase == "done"
    interrupt_at = FAST["warmup_epochs"] + 2  # during ART
    assert reference_art.history[interrupt_at]["phase"] == "art"

    backup = str(tmp_path / "art")
    model, _, art = art_setup(0.9, model=compiled(build()), backup_dir=backup)
    with pytest.raises(RuntimeError, match="interrupted"):
        fit_digits(model, art, callbacks=[interrupter(interrupt_at)])
    # As a new process would: a new model (other initial weights), regularizer
    # and callback, the same folder.
    model, _, art = art_setup(0.9, model=compiled(build(seed=1)), backup_dir=backup)
    fit_digits(model, art)
    assert art.phase == "done"
    assert art.termination_epoch == reference_art.termination_epoch
    np.testing.assert_equal(art.history, reference_art.history)  # NaN == NaN
    for key in art.masks:
        np.testing.assert_array_equal(art.masks[key], reference_art.masks[key])
    for a, b in zip(model.weights, reference.weights, strict=True):
        np.testing.assert_allclose(
            keras.ops.convert_to_numpy(a), keras.ops.convert_to_numpy(b), atol=1e-6
        )


def test_art_traces_the_train_step_a_few_times_not_every_step():
    if keras.backend.backend() == "torch":
        pytest.skip("PyTorch runs its train steps eagerly: nothing is traced")
    model, _, art = art_setup(0.9, model=compiled(functional_mlp()))
    original, traces, steps = model.train_step, [], []
    model.train_step = lambda *args: traces.append(1) or original(*args)

    class CountSteps(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            steps.append(batch)

    fit_digits(model, art, callbacks=[CountSteps()])
    assert art.phase == "done" and len(steps) > 300
    # A trace per batch shape (22 full batches and a last one of 29), at most
    # once more where the masks' change rebuilds the step (2 seen on
    # TensorFlow and JAX): the coefficient and statistics that ART changes
    # every epoch and step reach the step without a retrace.
    assert 1 <= len(traces) <= 4, len(traces)


@pytest.mark.parametrize(
    "make", [hypersparse_tf.AdaptiveL1, hypersparse_tf.AdaptiveL2], ids=["l1", "l2"]
)
def test_art_with_an_adaptive_penalty_ends_with_the_exact_sparsity(make):
    model, reg, art = art_setup(
        0.9, regularizer=make(), model=compiled(mlp()), epoch_budget=25
    )
    fit_digits(model, art)
    assert art.phase == "done"
    assert_sparsity(model, math.floor(0.9 * num_kernel_weights(model)))


@pytest.mark.parametrize(
    "build", [functional_mlp, mlp], ids=["functional", "sequential"]
)
def test_release_masks_lets_pruned_weights_train_and_sparsity_counts_them(build):
    x, _, y, _ = digits()
    model = compiled(build())
    masks = hypersparse_tf.global_magnitude_masks(model, 0.75)
    hypersparse_tf.fix_masks(model, masks)
    model.fit(x, y, epochs=1, batch_size=64, verbose=0)
    pruned = {key: int(np.sum(~mask)) for key, mask in masks.items()}
    counts = hypersparse_tf.masks.sparsity_counts(model)
    assert {key: zeros for key, (zeros, _) in counts.items()} == pruned
    total = sum(mask.size for mask in masks.values())
    assert hypersparse_tf.sparsity(model) == sum(pruned.values()) / total
    assert hypersparse_tf.sparsity_report(model).splitlines()[-1].split()[-1] == (
        f"{sum(pruned.values()) / total:.2%}"
    )

    hypersparse_tf.release_masks(model)  # the compiled step must drop them too
    model.fit(x, y, epochs=1, batch_size=64, verbose=0)
    for key, weight in hypersparse_tf.prunable_weights(model).items():
        value = keras.ops.convert_to_numpy(weight)
        # Most move (not all: some digits pixels are 0 in every image, and
        # their weights get no gradient); with the masks none would.
        assert np.count_nonzero(value[~masks[key]]) > 0.5 * pruned[key], key
