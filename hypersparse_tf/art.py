"""Adaptive Regularized Training (ART) as one Keras callback.

One `model.fit(..., callbacks=[art])` runs the whole method of the paper's code:

1. warm-up: `warmup_epochs` of dense training, coefficient 0;
2. ART: in ART epoch `e` the coefficient is `lambda_init * eta**e`, the
   regularizer's statistics are refreshed before every training step, and after
   each epoch a copy pruned by global magnitude to `prune_rate` is scored on
   `eval_data` ("pruned accuracy"). A buffer keeps the last `2 * buffer_size + 1`
   epochs; when its mean pruned accuracy beats the best mean so far, its middle
   element becomes the best candidate. ART stops when the best mean pruned
   accuracy exceeds the dense training accuracy of the current epoch;
3. fine-tuning: the best candidate's weights and mask are restored, the
   optimizer state is reset, and the model is fine-tuned `finetune_epochs` with
   the mask enforced in-graph (pruned weights stay exactly 0); the learning rate
   drops x0.1 at 50% and 75% of fine-tuning;
4. done: training stops.

`ART` is a Keras 3 callback. For a tf_keras (Keras 2) model, pass
`art.for_tf_keras()` to `fit` instead: a `tf_keras.callbacks.Callback` that
forwards every call to the same `ART` object, so the one object holds the
state, the history and the masks whichever Keras trains.
"""

import functools
import json
import math
import numbers
import os
import shutil
import sys

import keras
import numpy as np
import tensorflow as tf

from hypersparse_tf import masks as masks_lib
from hypersparse_tf import prunable
from hypersparse_tf import regularizers

PHASES = ("warmup", "art", "finetune", "done")
_ACCURACY_NAMES = (
    "accuracy",
    "acc",
    "sparse_categorical_accuracy",
    "categorical_accuracy",
    "binary_accuracy",
)
_EVAL_BATCH_SIZE = 256


def _check_int(value, name, minimum):
    if (
        isinstance(value, bool)
        or not isinstance(value, numbers.Integral)
        or value < minimum
    ):
        raise ValueError(
            f"Invalid value for argument `{name}`. Expected an int >= {minimum}. "
            f"Received: {name}={value!r}"
        )
    return int(value)


def _check_float(value, name, description, valid):
    if (
        isinstance(value, bool)
        or not isinstance(value, numbers.Real)
        or not math.isfinite(value)
        or not valid(value)
    ):
        raise ValueError(
            f"Invalid value for argument `{name}`. Expected {description}. "
            f"Received: {name}={value!r}"
        )
    return float(value)


def _eval_dataset(eval_data):
    """Checks `eval_data` and returns it as a batched `tf.data.Dataset`."""
    if isinstance(eval_data, tf.data.Dataset):
        if int(eval_data.cardinality()) == 0:
            raise ValueError(
                "Invalid value for argument `eval_data`. Expected a non-empty "
                "dataset of (x, y) batches. Received an empty dataset."
            )
        return eval_data
    if not isinstance(eval_data, (tuple, list)) or len(eval_data) != 2:
        raise ValueError(
            "Invalid value for argument `eval_data`. Expected a tf.data.Dataset "
            "of (x, y) batches or a tuple (x, y) of arrays, the data the pruned "
            f"accuracy is measured on. Received: eval_data={eval_data!r:.80}"
        )
    x, y = eval_data
    if len(x) == 0 or len(x) != len(y):
        raise ValueError(
            "Invalid value for argument `eval_data`. Expected (x, y) with the "
            f"same number > 0 of samples. Received {len(x)} inputs and {len(y)} "
            "labels."
        )
    return tf.data.Dataset.from_tensor_slices((x, y)).batch(_EVAL_BATCH_SIZE)


def finetune_lr_factor(epoch, length):
    """ART's default fine-tuning schedule: the factor on the initial learning
    rate in fine-tuning epoch `epoch` of `length`, x0.1 from 50% and again from
    75% of `length` (epochs 80 and 120 of the reference's 160)."""
    factor = 0.1 if epoch >= math.ceil(0.5 * length) else 1.0
    return factor * (0.1 if epoch >= math.ceil(0.75 * length) else 1.0)


def check_epoch_budget(epoch_budget, warmup_epochs, finetune_epochs):
    """Returns `epoch_budget` (None or an int) after checking that it leaves
    room for the warm-up, one ART epoch and `finetune_epochs`."""
    if epoch_budget is None:
        return None
    least = warmup_epochs + 1 + finetune_epochs
    if (
        isinstance(epoch_budget, bool)
        or not isinstance(epoch_budget, numbers.Integral)
        or epoch_budget < least
    ):
        raise ValueError(
            "Invalid value for argument `epoch_budget`. Expected None or an int "
            f">= {least} (warmup_epochs + one ART epoch + finetune_epochs). "
            f"Received: epoch_budget={epoch_budget!r}"
        )
    return int(epoch_budget)


def _batchnorm_layers(model):
    """The BatchNormalization layers of a Keras 3 or tf_keras model, nested
    models included."""
    classes = [keras.layers.BatchNormalization]
    if prunable.is_tf_keras(model):
        classes.append(sys.modules["tf_keras"].layers.BatchNormalization)
    return [
        layer
        for layer in model._flatten_layers(include_self=False, recursive=True)
        if isinstance(layer, tuple(classes))
    ]


class _ARTMaskConstraint(masks_lib.MaskConstraint):
    """ART's mask: all ones until fine-tuning (the optimizer reads constraints
    when the train step is traced, so it is installed for the whole run)."""


def _optimizer_variables(optimizer):
    """The variables of a Keras 3 or tf_keras optimizer, as a list."""
    variables = optimizer.variables
    # A method in tf_keras's legacy optimizers, a callable list in its others.
    return list(variables() if callable(variables) else variables)


class _ResumeAt:
    """Tells a tf_keras `fit` the epoch to start at, as tf_keras's own
    `BackupAndRestore` does through `model._training_state`."""

    def __init__(self, epoch):
        self.epoch = epoch

    def maybe_load_initial_counters_from_ckpt(
        self, steps_per_epoch, initial_epoch, mode=None
    ):
        return self.epoch, 0


@functools.cache
def _tf_keras_callback_class():
    """The tf_keras Callback that forwards to an `ART`; built on first use."""
    import tf_keras

    class ARTForTfKeras(tf_keras.callbacks.Callback):
        """A tf_keras callback that runs an `ART` object (see `ART.for_tf_keras`).

        Args:
            art: `ART`. The callback whose logic and state are used.
        """

        def __init__(self, art):
            super().__init__()
            self.art = art

        def set_model(self, model):
            super().set_model(model)
            self.art.set_model(model)

        def set_params(self, params):
            super().set_params(params)
            self.art.set_params(params)

        def on_train_begin(self, logs=None):
            if not prunable.is_tf_keras(self.model):
                raise TypeError(
                    "`ART.for_tf_keras()` is for tf_keras models; model "
                    f"{self.model.name!r} is a Keras 3 model: pass the `ART` "
                    "object itself to its `fit`."
                )
            self.art.on_train_begin(logs)

        def on_epoch_begin(self, epoch, logs=None):
            self.art.on_epoch_begin(epoch, logs)

        def on_train_batch_begin(self, batch, logs=None):
            self.art.on_train_batch_begin(batch, logs)

        def on_epoch_end(self, epoch, logs=None):
            self.art.on_epoch_end(epoch, logs)

        def on_train_end(self, logs=None):
            self.art.on_train_end(logs)

        def get_config(self):
            return self.art.get_config()

    return ARTForTfKeras


@keras.saving.register_keras_serializable(package="hypersparse_tf")
class ART(keras.callbacks.Callback):
    """Adaptive Regularized Training: warm-up, ART, fine-tuning in one `fit`.

    The callback drives a `HyperSparse`, `AdaptiveL1` or `AdaptiveL2`
    regularizer attached to the model (see `attach`). Its state survives
    between `fit` calls: if the epochs run out first, the next `fit` with the
    same callback continues where it stopped (`phase` says where). Call
    `reset()` to start over.

    Each epoch it writes `hypersparse_coefficient`, `pruned_accuracy` (NaN
    outside ART) and `sparsity` (exact zeros among the regularized kernels) into
    the epoch logs, for the progress bar, `CSVLogger` and `TensorBoard`: list
    `art` before those callbacks.

    For a tf_keras (Keras 2) model, e.g. one to hand to
    tensorflow-model-optimization, pass `art.for_tf_keras()` to `fit` in place
    of `art`; everything else is the same.

    The learning rate is left alone until fine-tuning. There it starts again
    from the optimizer's learning rate at the start of the first `fit` and drops
    x0.1 at 50% and 75% of fine-tuning, unless `finetune_schedule` is given or
    the optimizer's learning rate is a `LearningRateSchedule` (then ART never
    touches it). With `steps_per_execution > 1` the statistics are refreshed
    once per execution.

    Args:
        regularizer: `HyperSparse`, `AdaptiveL1` or `AdaptiveL2`. The
            regularizer attached to the model's kernels.
        eval_data: `tf.data.Dataset` of `(x, y)` batches, or a tuple `(x, y)`.
            The data the pruned accuracy is measured on, in inference mode; the
            reference uses the training set.
        warmup_epochs: Int >= 0. Epochs of dense training before ART. Defaults
            to `60`.
        lambda_init: Float > 0. Coefficient in the first ART epoch. Defaults
            to `5e-6`.
        eta: Float > 1. Growth of the coefficient per ART epoch. Defaults to
            `1.05`.
        finetune_epochs: Int >= 0. Epochs of fine-tuning with the mask fixed.
            Defaults to `160`.
        buffer_size: Int >= 0. `b`: the buffer holds `2b + 1` epochs. Defaults
            to `1`.
        prune_rate: Float in (0, 1) or None. Fraction of the regularized
            weights to remove. Defaults to `None`: the `HyperSparse`
            regularizer's own; required for `AdaptiveL1` and `AdaptiveL2`.
        accuracy_metric: String or None. Name of the training accuracy in the
            epoch logs. Defaults to `None`: found among the compiled metrics.
        finetune_schedule: Callable `(finetune_epoch, initial_lr) -> lr` or
            None. Learning rate of each fine-tuning epoch. Defaults to `None`
            (x0.1 at 50% and 75%).
        recalibrate_batchnorm: Int >= 0. If > 0, the BatchNorm moving
            statistics of the pruned copy are re-estimated on the first this
            many samples of `eval_data` (one forward pass in training mode with
            the momentum at 0) before its accuracy is measured, and put back
            afterwards. Pruning changes the activations, so the dense model's
            statistics can make a pruned copy of a BatchNorm network look far
            worse than it is (measured: 90% of a ResNet-8, 19% with the dense
            statistics, 36% re-estimated). The statistics are also
            re-estimated, and kept, when fine-tuning starts from the pruned
            best candidate: a short fine-tuning (few steps at BatchNorm's
            momentum 0.99) would otherwise end with statistics still partly
            those of the dense network. Defaults to `0`: the dense
            statistics, as the reference code.
        epoch_budget: Int or None. Epochs of warm-up, ART and fine-tuning
            together, for comparing methods on the same budget. ART then ends
            at the latest when `finetune_epochs` epochs of the budget remain
            (fine-tuning starts from the best candidate so far;
            `stopped_by_budget` says so), and fine-tuning lasts the rest of the
            budget: longer than `finetune_epochs` when ART ends earlier.
            Defaults to `None`: ART runs until its rule fires and fine-tuning
            lasts `finetune_epochs`.
        backup_dir: String or None. If given, the callback's state, the model's
            weights and the optimizer's state are written there after every
            epoch, and a `fit` that finds a backup there resumes from it (also
            alongside `keras.callbacks.BackupAndRestore` or tf_keras's).
            Deleted when `fit` ends normally. Defaults to `None`.
        verbose: Int. 0: silent; 1: announce phase changes. Defaults to `1`.

    Example:

    >>> reg = hypersparse_tf.HyperSparse(prune_rate=0.9)
    >>> hypersparse_tf.attach(model, reg)
    >>> model.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9),
    ...               loss="sparse_categorical_crossentropy",
    ...               metrics=["accuracy"])
    >>> art = hypersparse_tf.ART(reg, eval_data=(x_train, y_train))
    >>> model.fit(x_train, y_train, epochs=1000, callbacks=[art])
    >>> art.phase
    'done'
    """

    def __init__(
        self,
        regularizer,
        eval_data,
        warmup_epochs=60,
        lambda_init=5e-6,
        eta=1.05,
        finetune_epochs=160,
        buffer_size=1,
        prune_rate=None,
        accuracy_metric=None,
        finetune_schedule=None,
        recalibrate_batchnorm=0,
        epoch_budget=None,
        backup_dir=None,
        verbose=1,
    ):
        super().__init__()
        if not isinstance(regularizer, regularizers.AdaptiveRegularizer):
            raise TypeError(
                "Invalid value for argument `regularizer`. Expected a "
                "HyperSparse, AdaptiveL1 or AdaptiveL2 instance. Received: "
                f"regularizer={regularizer!r}"
            )
        if eval_data is None:
            raise ValueError(
                "Invalid value for argument `eval_data`. Expected the data the "
                "pruned accuracy is measured on, (x, y) or a tf.data.Dataset. "
                "Received: eval_data=None"
            )
        own_rate = getattr(regularizer, "prune_rate", None)
        if prune_rate is None:
            if own_rate is None:
                raise ValueError(
                    "Invalid value for argument `prune_rate`. Expected a float "
                    f"in (0, 1): {type(regularizer).__name__} has no prune rate "
                    "of its own. Received: prune_rate=None"
                )
            prune_rate = own_rate
        prune_rate = prunable.check_prune_rate(prune_rate)
        if own_rate is not None and prune_rate != own_rate:
            raise ValueError(
                "Invalid value for argument `prune_rate`. Expected None or the "
                f"regularizer's prune_rate={own_rate}. Received: "
                f"prune_rate={prune_rate}"
            )
        if finetune_schedule is not None and not callable(finetune_schedule):
            raise TypeError(
                "Invalid value for argument `finetune_schedule`. Expected a "
                "callable (finetune_epoch, initial_lr) -> lr or None. Received: "
                f"finetune_schedule={finetune_schedule!r}"
            )
        if accuracy_metric is not None and not isinstance(accuracy_metric, str):
            raise TypeError(
                "Invalid value for argument `accuracy_metric`. Expected a string "
                f"or None. Received: accuracy_metric={accuracy_metric!r}"
            )
        self.regularizer = regularizer
        self.eval_data = eval_data
        self._eval_dataset = _eval_dataset(eval_data)
        self.warmup_epochs = _check_int(warmup_epochs, "warmup_epochs", 0)
        self.lambda_init = _check_float(
            lambda_init, "lambda_init", "a float > 0", lambda v: v > 0
        )
        self.eta = _check_float(eta, "eta", "a float > 1", lambda v: v > 1)
        self.finetune_epochs = _check_int(finetune_epochs, "finetune_epochs", 0)
        self.buffer_size = _check_int(buffer_size, "buffer_size", 0)
        self.recalibrate_batchnorm = _check_int(
            recalibrate_batchnorm, "recalibrate_batchnorm", 0
        )
        self._recalibration_inputs = None
        epoch_budget = check_epoch_budget(
            epoch_budget, self.warmup_epochs, self.finetune_epochs
        )
        self.epoch_budget = epoch_budget
        self.prune_rate = prune_rate
        self.accuracy_metric = accuracy_metric
        self.finetune_schedule = finetune_schedule
        self.backup_dir = None if backup_dir is None else os.fspath(backup_dir)
        self.verbose = verbose
        self._mask_variables = None
        self._predict = None
        self._tf_keras_callback = None
        self.reset()

    def for_tf_keras(self):
        """This callback in a form a tf_keras (Keras 2) `fit` accepts.

        A tf_keras `fit` takes only `tf_keras.callbacks.Callback` objects. The
        object returned forwards every call to this `ART`, so `art.phase`,
        `art.history` and `art.masks` are read here as usual. Imports tf_keras;
        the same object is returned on every call.

        Returns:
            A `tf_keras.callbacks.Callback`.

        Example:

        >>> art = hypersparse_tf.ART(reg, eval_data=(x_train, y_train))
        >>> tf_keras_model.fit(x_train, y_train, epochs=1000,
        ...                    callbacks=[art.for_tf_keras()])
        >>> art.masks  # the fine-tuning mask
        """
        if self._tf_keras_callback is None:
            regularizers.register_with_tf_keras()
            self._tf_keras_callback = _tf_keras_callback_class()(self)
        return self._tf_keras_callback

    def _implements_train_batch_hooks(self):
        # tf_keras's CallbackList calls this on every callback it is given (a
        # Keras 3 callback has no such method): say what to do instead.
        raise TypeError(
            "hypersparse_tf.ART is a Keras 3 callback and this `fit` is tf_keras's "
            "(Keras 2). Pass `art.for_tf_keras()` in `callbacks` instead of `art`."
        )

    # ------------------------------------------------------------------ state

    def reset(self):
        """Forgets all progress: the next `fit` starts with the warm-up."""
        self.phase = "warmup" if self.warmup_epochs > 0 else "art"
        self.epochs_seen = 0
        self.warmup_epochs_done = 0
        self.art_epochs_done = 0
        self.finetune_epochs_done = 0
        self.termination_epoch = None
        self.stopped_by_budget = False
        self.history = []
        self.masks = None
        self.best_mean_pruned_accuracy = -math.inf
        self._buffer = []  # entries: dict(epoch, pruned_accuracy, weights, masks)
        self._best = None
        self._initial_lr = None
        self._weights_to_restore = None
        self._fit_epoch = 0

    @property
    def buffer(self):
        """The last `2b + 1` ART epochs: (epoch, pruned accuracy) pairs."""
        return [(e["epoch"], e["pruned_accuracy"]) for e in self._buffer]

    @property
    def finetune_length(self):
        """Epochs of fine-tuning: `finetune_epochs`, or with `epoch_budget`
        what the budget leaves after warm-up and ART (meaningful once ART
        has ended)."""
        if self.epoch_budget is None:
            return self.finetune_epochs
        return self.epoch_budget - self.warmup_epochs_done - self.art_epochs_done

    @property
    def best_candidate_epoch(self):
        """The epoch whose pruned weights fine-tuning starts from, or None."""
        return None if self._best is None else self._best["epoch"]

    @property
    def coefficient(self):
        """The coefficient of the current phase and epoch."""
        if self.phase == "art":
            return self.lambda_init * self.eta**self.art_epochs_done
        return 0.0

    # ------------------------------------------------------------- callbacks

    def on_train_begin(self, logs=None):
        model = self.model
        self._kernels = regularizers.attached_weights(model, self.regularizer)
        if not self._kernels:
            raise ValueError(
                f"The regularizer {self.regularizer!r} is attached to no weight "
                f"of model {model.name!r}. Call `hypersparse_tf.attach(model, "
                "regularizer)` before `fit`."
            )
        if getattr(model, "optimizer", None) is None:
            raise ValueError(f"Model {model.name!r} is not compiled.")
        self._accuracy_key = self._find_accuracy_key()
        outputs = model.outputs if getattr(model, "outputs", None) else None
        if outputs is not None and (len(outputs) != 1 or outputs[0].shape[-1] < 2):
            raise ValueError(
                "ART measures the pruned accuracy as the argmax over the classes "
                "of a single output; model "
                f"{model.name!r} has outputs {[o.shape for o in outputs]}."
            )
        # Every check passed: from here on, the model may change.
        self.regularizer._bind(list(self._kernels.values()))
        self._install_mask_constraints()
        restored = self._restore_backup()
        if self._initial_lr is None:
            self._initial_lr = self._current_lr()
        if self.phase == "finetune":
            self._load_mask_variables(self.masks)
        self.regularizer.coefficient.assign(self.coefficient)
        # Retrace: the regularizer or the mask constraints may be new to the
        # train step traced by an earlier `fit`.
        model.make_train_function(force=True)
        if self.phase == "done":
            self._say("ART is done; the mask stays enforced.")
        elif restored:
            self._say(f"ART resumed from {self.backup_dir}: phase {self.phase!r}.")

    def on_epoch_begin(self, epoch, logs=None):
        if self._weights_to_restore is not None:
            weights, optimizer_values = self._weights_to_restore
            self.model.set_weights(weights)
            self._set_optimizer_values(optimizer_values)
            self._weights_to_restore = None
        self.regularizer.coefficient.assign(self.coefficient)
        if self.phase == "finetune":
            self._set_finetune_lr()

    def on_train_batch_begin(self, batch, logs=None):
        if self.phase == "art":
            self.regularizer.update_statistics()

    def on_epoch_end(self, epoch, logs=None):
        logs = logs if logs is not None else {}
        accuracy = self._read_accuracy(logs)
        phase = self.phase
        coefficient = self.coefficient
        pruned_accuracy = math.nan
        if phase == "art":
            pruned_accuracy = self._art_epoch_end(accuracy)
        sparsity = self._sparsity()
        self.history.append(
            {
                "epoch": self.epochs_seen,
                "phase": phase,
                "coefficient": coefficient,
                "accuracy": accuracy,
                "pruned_accuracy": pruned_accuracy,
                "sparsity": sparsity,
            }
        )
        logs["hypersparse_coefficient"] = coefficient
        logs["pruned_accuracy"] = pruned_accuracy
        logs["sparsity"] = sparsity
        self.epochs_seen += 1
        self._fit_epoch = epoch + 1
        if phase == "warmup":
            self.warmup_epochs_done += 1
            if self.warmup_epochs_done >= self.warmup_epochs:
                self.phase = "art"
                self._say(f"ART: warm-up done after {self.warmup_epochs} epochs.")
        elif phase == "finetune":
            self.finetune_epochs_done += 1
            if self.finetune_epochs_done >= self.finetune_length:
                self._finish()
        self._write_backup()

    def on_train_end(self, logs=None):
        if prunable.is_tf_keras(self.model):
            if isinstance(getattr(self.model, "_training_state", None), _ResumeAt):
                self.model._training_state = None
        if self.backup_dir is not None and os.path.isdir(self.backup_dir):
            shutil.rmtree(self.backup_dir)
            if not prunable.is_tf_keras(self.model):
                self.model._initial_epoch = None

    # ------------------------------------------------------------ ART epochs

    def _art_epoch_end(self, dense_accuracy):
        weights = self.model.get_weights()
        kernel_values = {k: np.asarray(v.numpy()) for k, v in self._kernels.items()}
        masks = masks_lib.magnitude_masks(kernel_values, self.prune_rate)
        pruned_accuracy = self._pruned_accuracy(kernel_values, masks)
        self.record_art_epoch(pruned_accuracy, dense_accuracy, weights, masks)
        return pruned_accuracy

    def record_art_epoch(self, pruned_accuracy, dense_accuracy, weights, masks):
        """The buffer and stopping rule after one ART epoch.

        Public so the rule can be checked on hand-fed accuracies. Moves to
        fine-tuning (restoring the best candidate) when the rule fires.

        Args:
            pruned_accuracy: Float. Accuracy of the pruned copy.
            dense_accuracy: Float. Training accuracy of this epoch.
            weights: List of arrays. The model's weights at this epoch.
            masks: Dict of bool arrays. The pruned copy's masks.
        """
        self._buffer.append(
            {
                "epoch": self.epochs_seen,
                "pruned_accuracy": float(pruned_accuracy),
                "weights": weights,
                "masks": masks,
            }
        )
        del self._buffer[: -(2 * self.buffer_size + 1)]
        mean = float(np.mean([e["pruned_accuracy"] for e in self._buffer]))
        if mean > self.best_mean_pruned_accuracy:
            self.best_mean_pruned_accuracy = mean
            self._best = self._buffer[len(self._buffer) // 2]
        self.art_epochs_done += 1
        rule_fired = self.best_mean_pruned_accuracy > dense_accuracy
        out_of_budget = (
            self.epoch_budget is not None
            and self.finetune_length <= self.finetune_epochs
        )
        if rule_fired or out_of_budget:
            self.termination_epoch = self.epochs_seen
            self.stopped_by_budget = not rule_fired
            relation = ">" if rule_fired else "<="
            self._say(
                f"ART {'terminated' if rule_fired else 'stopped by the epoch budget'}"
                f" after {self.art_epochs_done} ART epochs: best mean pruned "
                f"accuracy {self.best_mean_pruned_accuracy:.4f} {relation} dense "
                f"accuracy {dense_accuracy:.4f}. Fine-tuning from epoch "
                f"{self._best['epoch']}."
            )
            self._start_finetuning()

    def _start_finetuning(self):
        best = self._best
        self.model.set_weights(best["weights"])
        self.masks = best["masks"]
        masks_lib.assign_masked(self._kernels, self.masks)
        if self.recalibrate_batchnorm:
            self._recalibrate_batchnorm()  # kept: fine-tuning starts from them
        self._load_mask_variables(self.masks)
        self._reset_optimizer()
        self._buffer = []
        self.phase = "finetune"
        self.regularizer.coefficient.assign(0.0)
        if self.finetune_length == 0:
            self._finish()

    def _finish(self):
        self.phase = "done"
        self.model.stop_training = True
        self._say("ART: fine-tuning done.")

    def _pruned_accuracy(self, kernel_values, masks):
        """Accuracy on `eval_data` of the model pruned with `masks`."""
        if self._predict is None:
            model = self.model
            self._predict = tf.function(
                lambda x: model(x, training=False), reduce_retracing=True
            )
        saved_statistics = []
        try:
            masks_lib.assign_masked(self._kernels, masks)
            if self.recalibrate_batchnorm:
                saved_statistics = self._recalibrate_batchnorm()
            correct = 0
            total = 0
            for batch in self._eval_dataset:
                x, y = batch[0], batch[1]
                predicted = np.argmax(np.asarray(self._predict(x)), axis=-1)
                labels = np.asarray(y)
                if labels.ndim == predicted.ndim + 1 and labels.shape[-1] > 1:
                    labels = np.argmax(labels, axis=-1)
                labels = labels.reshape(predicted.shape)
                correct += int(np.sum(predicted == labels))
                total += int(predicted.size)
        finally:
            for key, weight in self._kernels.items():
                weight.assign(kernel_values[key])
            for variable, value in saved_statistics:
                variable.assign(value)
        return correct / total

    def _recalibrate_batchnorm(self):
        """Sets the BatchNorm moving statistics to those of the current
        weights on the first `recalibrate_batchnorm` samples of `eval_data`;
        returns the `(variable, old value)` pairs to put back."""
        layers = _batchnorm_layers(self.model)
        if not layers:
            return []
        if self._recalibration_inputs is None:
            inputs, count = [], 0
            for batch in self._eval_dataset:
                inputs.append(batch[0])
                count += int(batch[0].shape[0])
                if count >= self.recalibrate_batchnorm:
                    break
            inputs = tf.concat(inputs, axis=0)[: self.recalibrate_batchnorm]
            self._recalibration_inputs = inputs
        saved = [
            (variable, variable.numpy())
            for layer in layers
            for variable in (layer.moving_mean, layer.moving_variance)
        ]
        momenta = [layer.momentum for layer in layers]
        try:
            for layer in layers:
                layer.momentum = 0.0
            self.model(self._recalibration_inputs, training=True)
        finally:
            for layer, momentum in zip(layers, momenta, strict=True):
                layer.momentum = momentum
        return saved

    # ----------------------------------------------------------------- masks

    def _install_mask_constraints(self):
        if self._mask_variables is not None and all(
            isinstance(masks_lib.variable_constraint(w), _ARTMaskConstraint)
            for w in self._kernels.values()
        ):
            return
        strategy = getattr(self.model, "distribute_strategy", None)
        strategy = strategy or tf.distribute.get_strategy()
        self._mask_variables = {}
        with strategy.scope():
            for key, weight in self._kernels.items():
                mask = tf.Variable(
                    tf.ones(weight.shape, tf.float32),
                    trainable=False,
                    name=f"mask_{key.replace('/', '_')}",
                )
                self._mask_variables[key] = mask
                previous = masks_lib.variable_constraint(weight)
                # An earlier ART's mask is replaced; a `fix_masks` mask stays.
                if isinstance(previous, _ARTMaskConstraint):
                    previous = previous.previous
                masks_lib.set_variable_constraint(
                    weight, _ARTMaskConstraint(mask, previous)
                )

    def _load_mask_variables(self, masks):
        for key, variable in self._mask_variables.items():
            variable.assign(np.asarray(masks[key], np.float32))

    def _sparsity(self):
        zeros = sum(
            int(np.size(v) - np.count_nonzero(v))
            for v in (w.numpy() for w in self._kernels.values())
        )
        return zeros / sum(int(np.prod(w.shape)) for w in self._kernels.values())

    # ------------------------------------------------------------- optimizer

    def _inner_optimizer(self):
        optimizer = self.model.optimizer
        return getattr(optimizer, "inner_optimizer", optimizer)

    def _lr_is_schedule(self):
        optimizer = self._inner_optimizer()
        schedules = [keras.optimizers.schedules.LearningRateSchedule]
        learning_rate = getattr(optimizer, "_learning_rate", None)
        if prunable.is_tf_keras(self.model):
            schedules.append(
                sys.modules["tf_keras"].optimizers.schedules.LearningRateSchedule
            )
            if learning_rate is None:  # a legacy tf_keras optimizer (OptimizerV2)
                learning_rate = getattr(optimizer, "_hyper", {}).get("learning_rate")
        return isinstance(learning_rate, tuple(schedules))

    def _current_lr(self):
        return float(np.asarray(self._inner_optimizer().learning_rate))

    def _set_lr(self, value):
        if not self._lr_is_schedule():
            self._inner_optimizer().learning_rate = float(value)

    def _set_finetune_lr(self):
        epoch = self.finetune_epochs_done
        if self.finetune_schedule is not None:
            lr = self.finetune_schedule(epoch, self._initial_lr)
        else:
            lr = self._initial_lr * finetune_lr_factor(epoch, self.finetune_length)
        self._set_lr(lr)

    def _reset_optimizer(self):
        """Zeroes the optimizer's state, as the reference's fresh optimizer."""
        for variable in _optimizer_variables(self._inner_optimizer()):
            variable.assign(tf.zeros(variable.shape, variable.dtype))
        self._set_lr(self._initial_lr)

    def _optimizer_values(self):
        return [
            np.asarray(v.numpy()) for v in _optimizer_variables(self.model.optimizer)
        ]

    def _build_optimizer(self):
        """Creates the optimizer's variables if no step has created them yet."""
        optimizer = self.model.optimizer
        variables = self.model.trainable_variables
        if not prunable.is_tf_keras(self.model):
            if not optimizer.built:
                optimizer.build(variables)
        elif hasattr(optimizer, "_create_all_weights"):  # legacy OptimizerV2
            with self.model.distribute_strategy.scope():
                optimizer._create_all_weights(variables)
        else:  # tf_keras's Optimizer: `build` does nothing the second time.
            with self.model.distribute_strategy.scope():
                optimizer.build(variables)

    def _set_optimizer_values(self, values):
        variables = _optimizer_variables(self.model.optimizer)
        if len(values) != len(variables):
            raise ValueError(
                f"The backup in {self.backup_dir} holds {len(values)} optimizer "
                f"variables; the model's optimizer has {len(variables)}."
            )
        for variable, value in zip(variables, values, strict=True):
            variable.assign(value)

    # ------------------------------------------------------------ accuracy

    def _find_accuracy_key(self):
        if self.accuracy_metric is not None:
            return self.accuracy_metric
        config = self.model.get_compile_config() or {}
        names = []  # (name in the logs, whether it is an accuracy)

        def collect(item):
            if isinstance(item, str):
                names.append((item, item in _ACCURACY_NAMES))
            elif isinstance(item, dict) and "config" in item:
                name = item["config"].get("name", "")
                is_accuracy = str(item.get("class_name", "")).endswith("Accuracy")
                names.append((name, is_accuracy or name.endswith("accuracy")))
            elif isinstance(item, dict):
                for value in item.values():
                    collect(value)
            elif isinstance(item, (list, tuple)):
                for value in item:
                    collect(value)

        collect(config.get("metrics"))
        collect(config.get("weighted_metrics"))
        for name, is_accuracy in names:
            if is_accuracy:
                return name
        names = [name for name, _ in names]
        raise ValueError(
            f"ART found no accuracy metric among the compiled metrics {names} of "
            f"model {self.model.name!r}. Compile with metrics=['accuracy'] or "
            "pass `accuracy_metric=<name in the epoch logs>`."
        )

    def _read_accuracy(self, logs):
        if self._accuracy_key not in logs and self.accuracy_metric is None:
            # Keras may log a compiled metric under another name ("acc").
            found = [
                k
                for k in logs
                if not k.startswith("val_")
                and (k in _ACCURACY_NAMES or k.endswith("accuracy"))
                and k != "pruned_accuracy"
            ]
            if len(found) == 1:
                self._accuracy_key = found[0]
        if self._accuracy_key in logs:
            return float(logs[self._accuracy_key])
        raise KeyError(
            f"ART reads the training accuracy from the epoch logs under "
            f"{self._accuracy_key!r}, which holds only {sorted(logs)}. Pass "
            "`accuracy_metric=` with one of these names."
        )

    # --------------------------------------------------------------- backup

    def _state(self):
        return {
            "phase": self.phase,
            "epochs_seen": self.epochs_seen,
            "warmup_epochs_done": self.warmup_epochs_done,
            "art_epochs_done": self.art_epochs_done,
            "finetune_epochs_done": self.finetune_epochs_done,
            "termination_epoch": self.termination_epoch,
            "stopped_by_budget": self.stopped_by_budget,
            "history": self.history,
            "best_mean_pruned_accuracy": self.best_mean_pruned_accuracy,
            "initial_lr": self._initial_lr,
            "buffer": [
                {"epoch": e["epoch"], "pruned_accuracy": e["pruned_accuracy"]}
                for e in self._buffer
            ],
            "best_epoch": self.best_candidate_epoch,
            "fit_epoch": self._fit_epoch,
        }

    def _write_backup(self):
        if self.backup_dir is None:
            return
        os.makedirs(self.backup_dir, exist_ok=True)
        new = os.path.join(self.backup_dir, "state.new")
        current = os.path.join(self.backup_dir, "state")
        shutil.rmtree(new, ignore_errors=True)
        os.makedirs(new)
        arrays = {}
        entries = list(self._buffer)
        if self._best is not None and all(e is not self._best for e in entries):
            entries.append(self._best)
        for index, entry in enumerate(entries):
            for i, w in enumerate(entry["weights"]):
                arrays[f"entry{index}/weight{i}"] = w
            for key, mask in entry["masks"].items():
                arrays[f"entry{index}/mask/{key}"] = mask
        if self.masks is not None:
            for key, mask in self.masks.items():
                arrays[f"masks/{key}"] = mask
        for i, w in enumerate(self.model.get_weights()):
            arrays[f"model/weight{i}"] = w
        for i, v in enumerate(self._optimizer_values()):
            arrays[f"optimizer/{i}"] = v
        state = self._state()
        state["entry_epochs"] = [e["epoch"] for e in entries]
        np.savez(os.path.join(new, "arrays.npz"), **arrays)
        with open(os.path.join(new, "state.json"), "w") as f:
            json.dump(state, f)
        old = os.path.join(self.backup_dir, "state.old")
        shutil.rmtree(old, ignore_errors=True)
        if os.path.isdir(current):
            os.rename(current, old)
        os.rename(new, current)
        shutil.rmtree(old, ignore_errors=True)

    def _restore_backup(self):
        if self.backup_dir is None:
            return False
        folder = os.path.join(self.backup_dir, "state")
        if not os.path.isdir(folder):
            folder = os.path.join(self.backup_dir, "state.old")
            if not os.path.isdir(folder):
                return False
        with open(os.path.join(folder, "state.json")) as f:
            state = json.load(f)
        with np.load(os.path.join(folder, "arrays.npz")) as data:
            arrays = {name: data[name] for name in data.files}
        num_weights = len(self.model.weights)

        def entry(index):
            prefix = f"entry{index}/"
            return {
                "epoch": state["entry_epochs"][index],
                "weights": [arrays[f"{prefix}weight{i}"] for i in range(num_weights)],
                "masks": {
                    name[len(prefix) + 5 :]: value
                    for name, value in arrays.items()
                    if name.startswith(prefix + "mask/")
                },
            }

        entries = [entry(i) for i in range(len(state["entry_epochs"]))]
        accuracies = {b["epoch"]: b["pruned_accuracy"] for b in state["buffer"]}
        for e in entries:
            e["pruned_accuracy"] = accuracies.get(e["epoch"], math.nan)
        self._buffer = [e for e in entries if e["epoch"] in accuracies]
        by_epoch = {e["epoch"]: e for e in entries}
        self._best = by_epoch.get(state["best_epoch"])
        self.phase = state["phase"]
        self.epochs_seen = state["epochs_seen"]
        self.warmup_epochs_done = state["warmup_epochs_done"]
        self.art_epochs_done = state["art_epochs_done"]
        self.finetune_epochs_done = state["finetune_epochs_done"]
        self.termination_epoch = state["termination_epoch"]
        self.stopped_by_budget = state["stopped_by_budget"]
        self.history = state["history"]
        self.best_mean_pruned_accuracy = state["best_mean_pruned_accuracy"]
        self._initial_lr = state["initial_lr"]
        mask_names = [n for n in arrays if n.startswith("masks/")]
        self.masks = {n[6:]: arrays[n] for n in mask_names} if mask_names else None
        self._build_optimizer()
        num_optimizer_values = len(_optimizer_variables(self.model.optimizer))
        self._weights_to_restore = (
            [arrays[f"model/weight{i}"] for i in range(num_weights)],
            [arrays[f"optimizer/{i}"] for i in range(num_optimizer_values)],
        )
        self._fit_epoch = state["fit_epoch"]
        # What the Keras BackupAndRestore callbacks do: the resumed `fit` starts
        # at the epoch after the backup.
        if not prunable.is_tf_keras(self.model):
            self.model._initial_epoch = self._fit_epoch
        elif getattr(self.model, "_training_state", None) is None:
            self.model._training_state = _ResumeAt(self._fit_epoch)
        return True

    # ----------------------------------------------------------------- misc

    def _say(self, message):
        if self.verbose > 0:
            print(message)

    def get_config(self):
        return {
            "warmup_epochs": self.warmup_epochs,
            "lambda_init": self.lambda_init,
            "eta": self.eta,
            "finetune_epochs": self.finetune_epochs,
            "epoch_budget": self.epoch_budget,
            "buffer_size": self.buffer_size,
            "recalibrate_batchnorm": self.recalibrate_batchnorm,
            "prune_rate": self.prune_rate,
            "accuracy_metric": self.accuracy_metric,
            "backup_dir": self.backup_dir,
            "verbose": self.verbose,
        }
