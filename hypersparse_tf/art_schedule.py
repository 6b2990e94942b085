"""ART's decisions in plain Python: phases, coefficient, buffer, stopping rule.

`ARTSchedule` holds no model and calls no framework: it is told, epoch by
epoch, the dense training accuracy and (in ART epochs) the pruned copy's
accuracy with an opaque candidate (whatever the caller needs to restore that
epoch: weights and masks), and it answers what happens next. The `ART`
callback wires it to Keras; a test or another training loop can drive it with
hand-fed accuracies.

The rule, per the paper's code:

1. warm-up: `warmup_epochs` epochs with coefficient 0;
2. ART epoch `e` (0-based) has the coefficient `lambda_init * eta**e`. After
   each, the buffer keeps the last `2 * buffer_size + 1` epochs. When the
   buffer's mean pruned accuracy exceeds the best candidate's OWN pruned
   accuracy (its single epoch's), the buffer's middle element (index
   `min(len - 1, buffer_size)`) becomes the best candidate and the buffer's
   mean is stored with it, so the stored mean can go down (`utils/art.py` of
   the reference). ART ends when the stored mean exceeds the epoch's dense
   training accuracy, or, with `epoch_budget`, when only `finetune_epochs` of
   the budget remain;
3. fine-tuning lasts `finetune_epochs` (with a budget: what the budget leaves);
4. done. (`"diverged"` instead ends a run whose weights or loss went NaN/inf;
   the caller sets it.)

This library's earlier rule compared the buffer's mean with the best MEAN so
far (which only rises) and took index `len // 2`; measured against the
reference's on the CIFAR-10 ResNet-8 setting (2 seeds,
`benchmarks/results/reference_divergences.md`) it was no better (90%: 28.45 ±
7.78 against 32.85 ± 1.56; 99%: 14.37 ± 5.27 against 14.85 ± 1.56), so only the
reference's rule is kept.
"""

import dataclasses
import math

import numpy as np

from hypersparse_tf import validation

PHASES = ("warmup", "art", "finetune", "done", "diverged")


def finetune_lr_factor(epoch, length):
    """ART's default fine-tuning schedule: the factor on the initial learning
    rate in fine-tuning epoch `epoch` of `length`, x0.1 from 50% and again from
    75% of `length` (epochs 80 and 120 of the reference's 160)."""
    factor = 0.1 if epoch >= math.ceil(0.5 * length) else 1.0
    return factor * (0.1 if epoch >= math.ceil(0.75 * length) else 1.0)


def check_epoch_budget(epoch_budget, warmup_epochs, finetune_epochs):
    """Returns `epoch_budget` (None or an int) after checking that it leaves
    room for the warm-up, one ART epoch and `finetune_epochs`."""
    least = warmup_epochs + 1 + finetune_epochs
    if epoch_budget is not None and (
        not validation.is_int(epoch_budget) or epoch_budget < least
    ):
        raise ValueError(
            validation.invalid(
                "epoch_budget",
                f"None or an int >= {least} (warmup_epochs + one ART epoch + "
                "finetune_epochs)",
                epoch_budget,
            )
        )
    return None if epoch_budget is None else int(epoch_budget)


@dataclasses.dataclass
class Candidate:
    """One ART epoch in the buffer: its pruned accuracy and what restores it."""

    epoch: int
    pruned_accuracy: float
    payload: object = None


class ARTSchedule:
    """The phase machine, coefficient, buffer and stopping rule of ART.

    Args:
        warmup_epochs: Int >= 0. Epochs of dense training before ART.
        lambda_init: Float > 0. Coefficient in the first ART epoch.
        eta: Float > 1. Growth of the coefficient per ART epoch.
        finetune_epochs: Int >= 0. Epochs of fine-tuning.
        buffer_size: Int >= 0. `b`: the buffer holds `2b + 1` epochs.
        epoch_budget: Int or None. Warm-up, ART and fine-tuning together (see
            `ART`). Defaults to `None`.

    Example:

    >>> schedule = ARTSchedule(0, 1e-4, 1.1, 10, 1)
    >>> schedule.record_art_epoch(0.5, dense_accuracy=0.9, payload="w0")
    >>> schedule.end_epoch("art")
    >>> schedule.coefficient  # 1e-4 * 1.1
    """

    def __init__(
        self,
        warmup_epochs,
        lambda_init,
        eta,
        finetune_epochs,
        buffer_size,
        epoch_budget=None,
    ):
        self.warmup_epochs = validation.check_int(warmup_epochs, "warmup_epochs", 0)
        self.lambda_init = validation.check_float(
            lambda_init, "lambda_init", 0, exclusive_minimum=True
        )
        self.eta = validation.check_float(eta, "eta", 1, exclusive_minimum=True)
        self.finetune_epochs = validation.check_int(
            finetune_epochs, "finetune_epochs", 0
        )
        self.buffer_size = validation.check_int(buffer_size, "buffer_size", 0)
        self.epoch_budget = check_epoch_budget(
            epoch_budget, self.warmup_epochs, self.finetune_epochs
        )
        self.reset()

    def reset(self):
        """Forgets all progress: the next epoch is the first of the warm-up."""
        self.phase = "warmup" if self.warmup_epochs > 0 else "art"
        self.epochs_seen = 0
        self.warmup_epochs_done = 0
        self.art_epochs_done = 0
        self.finetune_epochs_done = 0
        self.termination_epoch = None
        self.stopped_by_budget = False
        self.best_mean_pruned_accuracy = -math.inf
        self.buffer = []  # Candidate entries, oldest first
        self.best = None  # a Candidate

    @property
    def coefficient(self):
        """The regularization coefficient of the current phase and epoch."""
        if self.phase == "art":
            return self.lambda_init * self.eta**self.art_epochs_done
        return 0.0

    @property
    def finetune_length(self):
        """Epochs of fine-tuning: `finetune_epochs`, or with `epoch_budget`
        what the budget leaves after warm-up and ART (meaningful once ART
        has ended)."""
        if self.epoch_budget is None:
            return self.finetune_epochs
        return self.epoch_budget - self.warmup_epochs_done - self.art_epochs_done

    def finetune_lr_factor(self):
        """The default learning-rate factor of the current fine-tuning epoch."""
        return finetune_lr_factor(self.finetune_epochs_done, self.finetune_length)

    def record_art_epoch(self, pruned_accuracy, dense_accuracy, payload=None):
        """The buffer and stopping rule after one ART epoch.

        Args:
            pruned_accuracy: Float. Accuracy of this epoch's pruned copy.
            dense_accuracy: Float. Training accuracy of this epoch.
            payload: Anything. What restores this epoch's candidate (the
                caller's weights and masks); kept with it.

        Returns:
            `None` while ART goes on, else why it ended: `"rule"` (the best
            mean pruned accuracy exceeds `dense_accuracy`) or `"budget"`. The
            phase is then `"finetune"` (or `"done"` when fine-tuning has no
            epoch) and `best` is the candidate to fine-tune.
        """
        if self.phase != "art":
            raise RuntimeError(
                f"record_art_epoch is for ART epochs; the phase is {self.phase!r}."
            )
        self.buffer.append(Candidate(self.epochs_seen, float(pruned_accuracy), payload))
        del self.buffer[: -(2 * self.buffer_size + 1)]
        mean = float(np.mean([c.pruned_accuracy for c in self.buffer]))
        # The first ART epoch always becomes a candidate (the reference starts
        # from 0.0: the same unless every accuracy so far is 0).
        bar = -math.inf if self.best is None else self.best.pruned_accuracy
        middle = min(len(self.buffer) - 1, self.buffer_size)
        if mean > bar:
            self.best_mean_pruned_accuracy = mean
            self.best = self.buffer[middle]
        self.art_epochs_done += 1
        rule_fired = self.best_mean_pruned_accuracy > dense_accuracy
        out_of_budget = (
            self.epoch_budget is not None
            and self.finetune_length <= self.finetune_epochs
        )
        if not (rule_fired or out_of_budget):
            return None
        self.termination_epoch = self.epochs_seen
        self.stopped_by_budget = not rule_fired
        self.buffer = []
        self.phase = "finetune" if self.finetune_length > 0 else "done"
        return "rule" if rule_fired else "budget"

    def end_epoch(self, phase):
        """Counts one finished epoch that was run in `phase`.

        Returns:
            The phase that ended with this epoch (`"warmup"` or `"finetune"`),
            or None.
        """
        self.epochs_seen += 1
        if phase == "warmup":
            self.warmup_epochs_done += 1
            if self.warmup_epochs_done >= self.warmup_epochs:
                self.phase = "art"
                return "warmup"
        elif phase == "finetune":
            self.finetune_epochs_done += 1
            if self.finetune_epochs_done >= self.finetune_length:
                self.phase = "done"
                return "finetune"
        return None

    def get_state(self):
        """The schedule's state as plain JSON values (payloads left out)."""
        return {
            "phase": self.phase,
            "epochs_seen": self.epochs_seen,
            "warmup_epochs_done": self.warmup_epochs_done,
            "art_epochs_done": self.art_epochs_done,
            "finetune_epochs_done": self.finetune_epochs_done,
            "termination_epoch": self.termination_epoch,
            "stopped_by_budget": self.stopped_by_budget,
            "best_mean_pruned_accuracy": self.best_mean_pruned_accuracy,
            "buffer": [
                {"epoch": c.epoch, "pruned_accuracy": c.pruned_accuracy}
                for c in self.buffer
            ],
            "best_epoch": None if self.best is None else self.best.epoch,
            "best_pruned_accuracy": (
                None if self.best is None else self.best.pruned_accuracy
            ),
        }

    def candidates(self):
        """`{epoch: payload}` of the buffer and the best candidate."""
        entries = {c.epoch: c.payload for c in self.buffer}
        if self.best is not None:
            entries[self.best.epoch] = self.best.payload
        return entries

    def set_state(self, state, payloads):
        """Restores `get_state()`, with `payloads` as `candidates()` gave them."""
        for key in (
            "phase",
            "epochs_seen",
            "warmup_epochs_done",
            "art_epochs_done",
            "finetune_epochs_done",
            "termination_epoch",
            "stopped_by_budget",
            "best_mean_pruned_accuracy",
        ):
            setattr(self, key, state[key])
        self.buffer = [
            Candidate(e["epoch"], e["pruned_accuracy"], payloads[e["epoch"]])
            for e in state["buffer"]
        ]
        self.best = None
        if state["best_epoch"] is not None:
            self.best = next(
                (c for c in self.buffer if c.epoch == state["best_epoch"]),
                Candidate(
                    state["best_epoch"],
                    state["best_pruned_accuracy"],
                    payloads[state["best_epoch"]],
                ),
            )
