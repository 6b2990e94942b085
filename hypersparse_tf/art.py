"""Adaptive Regularized Training (ART) as one Keras callback.

One `model.fit(..., callbacks=[art])` runs the whole method of the paper's code
(see `art_schedule` for the rule): warm-up, ART epochs with a growing
coefficient and a pruned copy scored after each, fine-tuning of the best
candidate with its mask enforced in-graph, done. The decisions are made by an
`ARTSchedule` (plain Python); this module wires it to Keras: the regularizer's
coefficient and statistics, the pruned copy (`evaluation`), the mask
constraints (`masks`), the optimizer (`optimizers`) and the backup (`backup`).

`ART` is a Keras 3 callback. For a tf_keras (Keras 2) model, pass
`art.for_tf_keras()` to `fit` instead: a `tf_keras.callbacks.Callback` that
forwards every call to the same `ART` object, so the one object holds the
state, the history and the masks whichever Keras trains.
"""

import math

import keras
import numpy as np

from hypersparse_tf import _keras_compat
from hypersparse_tf import art_schedule
from hypersparse_tf import attachment
from hypersparse_tf import backend_state
from hypersparse_tf import backup as backup_lib
from hypersparse_tf import eval_data as eval_data_lib
from hypersparse_tf import evaluation
from hypersparse_tf import groups
from hypersparse_tf import io_utils
from hypersparse_tf import mask_constraints
from hypersparse_tf import masks as masks_lib
from hypersparse_tf import optimizers
from hypersparse_tf import reference
from hypersparse_tf import regularizers
from hypersparse_tf import tf_keras_callback
from hypersparse_tf import validation


def _schedule_attribute(name, doc):
    """A property of `ART` that reads and writes its schedule's `name`."""
    return property(
        lambda self: getattr(self.schedule, name),
        lambda self, value: setattr(self.schedule, name, value),
        doc=doc,
    )


class ART(tf_keras_callback.TfKerasFace, keras.callbacks.Callback):
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

    A run whose loss or weights go NaN or inf stops in phase `"diverged"`
    (`diverged_epoch` says when) with a message; `fit` returns, and the model
    holds the best pruned candidate so far, or, before ART has one, the
    weights of the last epoch that ended finite.

    The learning rate is left alone until fine-tuning. There it starts again
    from the optimizer's learning rate at the start of the first `fit` and drops
    x0.1 at 50% and 75% of fine-tuning, unless `finetune_schedule` is given or
    the optimizer's learning rate is a `LearningRateSchedule` (then ART never
    touches it). With `steps_per_execution > 1` the statistics are refreshed
    once per execution.

    Args:
        regularizer: `HyperSparse`, `AdaptiveL1` or `AdaptiveL2`. The
            regularizer attached to the model's kernels.
        eval_data: What `fit` takes: `(x, y)` or `(x, y, sample_weight)` of
            arrays (`x` a list, tuple or dict of arrays for several inputs, `y`
            sparse or one-hot), a `tf.data.Dataset` of such batches, or a
            `keras.utils.PyDataset`. The data the pruned accuracy is measured
            on, in inference mode (weighted by the sample weights); the
            reference uses its augmented training data.
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
        recalibrate_batchnorm: Int >= 0. If > 0 and the model has
            BatchNorm, the BatchNorm statistics of each pruned copy are
            re-estimated on the first this many samples of `eval_data` before
            it is scored (see `hypersparse_tf.recalibrate_batchnorm`), and
            kept when fine-tuning starts from the best candidate. Defaults to
            `512`. `0` scores with the dense model's statistics, as the
            reference code does. Measured (`benchmarks/results/`): on the
            CIFAR-10 ResNet-8 setting, 46.10% against 32.85% at 90% and
            24.28% against 16.38% at 99% (2 seeds); on the default main job,
            ART ends after 37 instead of 58 epochs at the same accuracy.
        epoch_budget: Int or None. Epochs of warm-up, ART and fine-tuning
            together, to compare methods on one budget: ART ends at the latest
            when `finetune_epochs` of the budget remain (`stopped_by_budget`),
            and fine-tuning takes the rest. Defaults to `None`: ART runs until
            its rule fires, fine-tuning lasts `finetune_epochs`.
        backup_dir: String or None. If given, the callback's state, the model's
            weights and the optimizer's state are written there after every
            epoch, and a `fit` that finds a backup there resumes from it (also
            alongside `keras.callbacks.BackupAndRestore` or tf_keras's).
            Deleted when `fit` ends normally. Defaults to `None`.
        verbose: Int. 0: silent; 1: announce phase changes. Defaults to `1`.
        eval_output: None, or the name (or index) of the output the pruned
            accuracy is read from, for a model with several outputs (then
            also pass `accuracy_metric=` with that output's training
            accuracy). Defaults to `None`.
        eval_metric: None or a `keras.metrics.Metric` computed on the pruned
            copy instead of the top-1 accuracy (e.g. `BinaryAccuracy()` for a
            one-unit output). Defaults to `None`.

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
        warmup_epochs=reference.WARMUP_EPOCHS,
        lambda_init=reference.LAMBDA_INIT,
        eta=reference.ETA,
        finetune_epochs=reference.FINETUNE_EPOCHS,
        buffer_size=reference.BUFFER_SIZE,
        prune_rate=None,
        accuracy_metric=None,
        finetune_schedule=None,
        recalibrate_batchnorm=512,
        epoch_budget=None,
        backup_dir=None,
        verbose=1,
        eval_output=None,
        eval_metric=None,
    ):
        super().__init__()
        self.prune_rate = attachment.art_prune_rate(regularizer, prune_rate)
        evaluation.check_metric(eval_metric)
        self.finetune_schedule = validation.check_callable(
            finetune_schedule, "finetune_schedule", "(finetune_epoch, initial_lr) -> lr"
        )
        self.accuracy_metric = validation.check_string(
            accuracy_metric, "accuracy_metric"
        )
        self.regularizer = regularizer
        self.eval_data = eval_data
        self.recalibrate_batchnorm = validation.check_int(
            recalibrate_batchnorm, "recalibrate_batchnorm", 0
        )
        self._eval_data = eval_data_lib.EvalData(eval_data)
        self.eval_output = eval_output
        self.eval_metric = eval_metric
        self.schedule = art_schedule.ARTSchedule(
            warmup_epochs,
            lambda_init,
            eta,
            finetune_epochs,
            buffer_size,
            epoch_budget,
        )
        self.backup_dir = None if backup_dir is None else str(backup_dir)
        self.verbose = validation.check_int(verbose, "verbose", 0)
        self._backup = None if backup_dir is None else backup_lib.ARTBackup(backup_dir)
        self._mask_variables = None
        self._evaluator = None
        self.reset()

    warmup_epochs = property(lambda self: self.schedule.warmup_epochs)
    lambda_init = property(lambda self: self.schedule.lambda_init)
    eta = property(lambda self: self.schedule.eta)
    finetune_epochs = property(lambda self: self.schedule.finetune_epochs)
    buffer_size = property(lambda self: self.schedule.buffer_size)
    epoch_budget = property(lambda self: self.schedule.epoch_budget)
    phase = _schedule_attribute("phase", "`warmup`, `art`, `finetune` or `done`.")
    epochs_seen = _schedule_attribute("epochs_seen", "Epochs trained under ART.")
    warmup_epochs_done = _schedule_attribute("warmup_epochs_done", "Warm-up epochs.")
    art_epochs_done = _schedule_attribute("art_epochs_done", "ART epochs.")
    finetune_epochs_done = _schedule_attribute("finetune_epochs_done", "Epochs.")
    termination_epoch = _schedule_attribute(
        "termination_epoch", "The last ART epoch, or None while ART goes on."
    )
    stopped_by_budget = _schedule_attribute(
        "stopped_by_budget", "Whether `epoch_budget`, not the rule, ended ART."
    )
    best_mean_pruned_accuracy = _schedule_attribute(
        "best_mean_pruned_accuracy", "The buffer mean stored with the best candidate."
    )

    def reset(self):
        """Forgets all progress: the next `fit` starts with the warm-up."""
        self.schedule.reset()
        self.history = []
        self.masks = None
        self.diverged_epoch = None
        self._last_finite = None
        self._initial_lr = None
        self._restore_from = None
        self._resumed = False
        self._fit_epoch = 0

    def mask_variables(self):
        """`{key: variable}`: the in-graph masks ART enforces (all ones until
        fine-tuning), one per regularized kernel; empty before `fit`."""
        return dict(self._mask_variables or {})

    @property
    def buffer(self):
        """The last `2b + 1` ART epochs: (epoch, pruned accuracy) pairs."""
        return [(c.epoch, c.pruned_accuracy) for c in self.schedule.buffer]

    @property
    def finetune_length(self):
        """Epochs of fine-tuning (see `ARTSchedule.finetune_length`)."""
        return self.schedule.finetune_length

    @property
    def best_candidate_epoch(self):
        """The epoch whose pruned weights fine-tuning starts from, or None."""
        return None if self.schedule.best is None else self.schedule.best.epoch

    @property
    def coefficient(self):
        """The coefficient of the current phase and epoch."""
        return self.schedule.coefficient

    def on_train_begin(self, logs=None):
        model = self.model
        kernels, accuracy = evaluation.check_art_model(
            model,
            self.regularizer,
            self.accuracy_metric,
            self.eval_output,
            self.eval_metric,
        )
        # Every check passed: from here on, the model may change.
        self._kernels, self._accuracy = kernels, accuracy
        if self._evaluator is None or self._evaluator.model is not model:
            self._evaluator = evaluation.PrunedEvaluator(
                model,
                self._eval_data,
                self.recalibrate_batchnorm,
                self.eval_output,
                self.eval_metric,
            )
        attachment.bind_attached(model, self.regularizer)
        # With channel structure, the removed channels' biases and BatchNorm
        # gamma/beta are masked with the kernels (`groups.companion_masks`).
        grouping = getattr(self.regularizer, "grouping", None)
        self._masked = dict(kernels)
        if grouping is not None:
            self._masked.update(groups.companion_weights(grouping))
        masked = self._masked
        if self._mask_variables is None or not mask_constraints.has_mask_constraints(
            masked, mask_constraints.ARTMaskConstraint
        ):
            ones = {key: np.ones(w.shape, bool) for key, w in masked.items()}
            self._mask_variables = mask_constraints.install_mask_constraints(
                model, masked, ones, mask_constraints.ARTMaskConstraint
            )
        restored = self._restore_backup()
        self._last_finite = (None, model.get_weights())
        if self._initial_lr is None:
            self._initial_lr = optimizers.learning_rate(model.optimizer)
        if self.phase == "finetune":
            mask_constraints.assign_mask_variables(self._mask_variables, self.masks)
        self.regularizer.coefficient.assign(self.coefficient)
        # Retrace: the regularizer or the mask constraints may be new to the
        # train step traced by an earlier `fit`.
        model.make_train_function(force=True)
        if self.phase == "done":
            self._say("ART is done; the mask stays enforced.")
        elif restored:
            self._say(f"ART resumed from {self.backup_dir}: phase {self.phase!r}.")

    def on_epoch_begin(self, epoch, logs=None):
        self._match_resumed_epoch(epoch)
        if self._restore_from is not None:
            backup_lib.ARTBackup.restore_model(self.model, self._restore_from)
            self._restore_from = None
            self._last_finite = (None, self.model.get_weights())
        self.regularizer.coefficient.assign(self.coefficient)
        if self.phase == "finetune":
            if self.finetune_schedule is not None:
                lr = self.finetune_schedule(self.finetune_epochs_done, self._initial_lr)
            else:
                lr = self._initial_lr * self.schedule.finetune_lr_factor()
            optimizers.set_learning_rate(self.model.optimizer, lr)

    def on_train_batch_begin(self, batch, logs=None):
        if self.phase == "art":
            backend_state.sync_for_callback(self.model)
            try:
                self.regularizer.update_statistics()
            except regularizers.NonFiniteWeightsError:
                self._diverge("the regularized kernels hold NaN or inf")

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if self.phase in ("warmup", "art", "finetune") and loss is not None:
            loss = np.asarray(loss)
            if not np.isfinite(loss).all():
                self._diverge(f"the training loss is {float(loss)}")

    def on_epoch_end(self, epoch, logs=None):
        logs = logs if logs is not None else {}
        accuracy = self._accuracy.read(logs)
        weights = self.model.get_weights()
        if self.phase != "diverged":
            if all(np.isfinite(w).all() for w in weights):
                self._last_finite = (self.epochs_seen, weights)
            else:
                self._diverge("the model's weights hold NaN or inf")
        if self.phase == "diverged" and self.diverged_epoch == self.epochs_seen:
            self._leave_finite()  # the run has stopped: no step follows
        phase, coefficient = self.phase, self.coefficient
        pruned_accuracy = math.nan
        if phase == "art":
            values = {k: np.asarray(v.numpy()) for k, v in self._kernels.items()}
            grouping = getattr(self.regularizer, "grouping", None)
            if grouping is not None:
                kept = self.regularizer.structured_masks(list(values.values()))
                masks = dict(zip(values, kept, strict=True))
                masks.update(groups.companion_masks(grouping, kept))
            else:
                masks = masks_lib.magnitude_masks(values, self.prune_rate)
            pruned_accuracy = self._evaluator.pruned_accuracy(self._masked, masks)
            self.record_art_epoch(pruned_accuracy, accuracy, weights, masks)
        sparsity = masks_lib.fraction_of_zeros(self._kernels)
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
        self._fit_epoch = epoch + 1
        ended = self.schedule.end_epoch(phase)
        if ended == "warmup":
            self._say(f"ART: warm-up done after {self.warmup_epochs} epochs.")
        elif ended == "finetune":
            self._finish()
        self._write_backup()

    def on_train_end(self, logs=None):
        if self._backup is not None:
            self._backup.delete()
            _keras_compat.clear_initial_epoch(self.model)

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
        payload = {"weights": weights, "masks": masks}
        reason = self.schedule.record_art_epoch(
            pruned_accuracy, dense_accuracy, payload
        )
        if reason is None:
            return
        relation = ">" if reason == "rule" else "<="
        how = "terminated" if reason == "rule" else "stopped by the epoch budget"
        self._say(
            f"ART {how} after {self.art_epochs_done} ART epochs: best mean pruned "
            f"accuracy {self.best_mean_pruned_accuracy:.4f} {relation} dense "
            f"accuracy {dense_accuracy:.4f}. Fine-tuning from epoch "
            f"{self.best_candidate_epoch}."
        )
        self._start_finetuning()

    def _start_finetuning(self):
        best = self.schedule.best.payload
        self.model.set_weights(best["weights"])
        self.masks = best["masks"]
        masks_lib.assign_masked(self._masked, self.masks)
        if self.recalibrate_batchnorm:
            self._evaluator.recalibrate()  # kept: fine-tuning starts from them
        mask_constraints.assign_mask_variables(self._mask_variables, self.masks)
        mask_constraints.refresh_compiled_masks(self.model)
        optimizers.reset_optimizer_state(self.model.optimizer)
        optimizers.set_learning_rate(self.model.optimizer, self._initial_lr)
        self.regularizer.coefficient.assign(0.0)
        if self.phase == "done":  # no fine-tuning epoch
            self._finish()

    def _diverge(self, reason):
        """Stops a run that went NaN/inf; `on_epoch_end` then leaves the model
        with a finite state (see `_leave_finite`)."""
        if self.phase == "diverged":
            return
        self.phase = "diverged"
        self.diverged_epoch = self.epochs_seen
        self._divergence = reason
        self.regularizer.coefficient.assign(0.0)
        self.model.stop_training = True

    def _leave_finite(self):
        """The best pruned candidate so far (mask applied and enforced), else
        the weights of the last epoch that ended finite (or those at the start
        of `fit`)."""
        best = self.schedule.best
        if best is not None:
            self.model.set_weights(best.payload["weights"])
            self.masks = best.payload["masks"]
            masks_lib.assign_masked(self._masked, self.masks)
            mask_constraints.assign_mask_variables(self._mask_variables, self.masks)
            mask_constraints.refresh_compiled_masks(self.model)
            left = f"the best pruned candidate (epoch {best.epoch})"
        else:
            epoch, weights = self._last_finite
            self.model.set_weights(weights)
            left = (
                "the weights at the start of fit"
                if epoch is None
                else (f"the weights of epoch {epoch}, the last that ended finite")
            )
        io_utils.print_msg(
            f"ART stopped in epoch {self.diverged_epoch}: training diverged "
            f"({self._divergence}). The model holds {left}. Lower the learning "
            "rate or lambda_init, and call `reset()` to start over."
        )

    def _finish(self):
        self.phase = "done"
        self.model.stop_training = True
        self._say("ART: fine-tuning done.")

    def _write_backup(self):
        if self._backup is None:
            return
        state = {
            "schedule": self.schedule.get_state(),
            "history": self.history,
            "initial_lr": self._initial_lr,
            "fit_epoch": self._fit_epoch,
            "diverged_epoch": self.diverged_epoch,
        }
        candidates = self.schedule.candidates()
        self._backup.write(self.model, state, candidates, self.masks)

    def _restore_backup(self):
        found = None if self._backup is None else self._backup.read()
        if found is None:
            return False
        self._apply_backup(found)
        optimizers.build_optimizer(self.model)
        # As Keras' BackupAndRestore: the resumed `fit` starts at the epoch
        # after the backup.
        _keras_compat.set_initial_epoch(self.model, self._fit_epoch)
        self._resumed = True
        return True

    def _match_resumed_epoch(self, epoch):
        """At the first epoch of a resumed `fit`: where the trainer resumes
        one epoch earlier than ART's backup (tf_keras's `BackupAndRestore`
        wrote its checkpoint after ART's, and the process died in between),
        ART takes its previous backup, so that the epoch is not counted
        twice."""
        if not self._resumed:
            return
        self._resumed = False
        if epoch >= self._fit_epoch or self._backup is None:
            return
        for folder in self._backup.generations()[1:]:
            found = self._backup.read(folder)
            if found[0]["fit_epoch"] == epoch:
                self._apply_backup(found)
                ones = {k: np.ones(v.shape, bool) for k, v in self._masked.items()}
                masks = self.masks if self.phase == "finetune" else ones
                mask_constraints.assign_mask_variables(self._mask_variables, masks)
                mask_constraints.refresh_compiled_masks(self.model)
                self._say(f"ART resumed from its backup of epoch {epoch}.")
                return

    def _apply_backup(self, found):
        state, candidates, self.masks, self._restore_from = found
        self.schedule.set_state(state["schedule"], candidates)
        self.history = state["history"]
        self._initial_lr = state["initial_lr"]
        self._fit_epoch = state["fit_epoch"]
        self.diverged_epoch = state.get("diverged_epoch")

    def _say(self, message):
        if self.verbose > 0:
            io_utils.print_msg(message)

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
