"""ART's rule on hand-fed accuracies: no model, no framework."""

import math

import pytest

from hypersparse_tf.art_schedule import ARTSchedule
from hypersparse_tf.art_schedule import finetune_lr_factor


def _art_epoch(schedule, pruned, dense=1.0):
    """One ART epoch: record it, then count it as the callback does."""
    payload = f"weights of epoch {schedule.epochs_seen}"
    reason = schedule.record_art_epoch(pruned, dense, payload)
    schedule.end_epoch("art")
    return reason


def test_schedule_phases_coefficients_and_counters():
    schedule = ARTSchedule(2, 1e-4, 1.5, 3, 1)
    pruned = iter([0.2, 0.4, 0.95, 0.97, 0.99])
    phases, coefficients, best = [], [], []
    while schedule.phase != "done":
        phase = schedule.phase
        phases.append(phase)
        coefficients.append(schedule.coefficient)
        if phase == "art":
            # Buffer means 0.2, 0.3, 0.517, 0.767, 0.97, each above the best
            # candidate's own accuracy (-, 0.2, 0.4, 0.4, 0.95): the middle
            # element becomes the best every time; 0.97 > 0.9 fires.
            schedule.record_art_epoch(next(pruned), 0.9, schedule.epochs_seen)
            best.append(schedule.best.epoch)
        schedule.end_epoch(phase)
    assert phases == ["warmup"] * 2 + ["art"] * 5 + ["finetune"] * 3
    assert coefficients[:2] == [0.0, 0.0] and coefficients[7:] == [0.0] * 3
    assert coefficients[2:7] == pytest.approx([1e-4 * 1.5**e for e in range(5)])
    assert best == [2, 3, 3, 4, 5]
    assert schedule.termination_epoch == 6 and schedule.best.payload == 5
    assert (schedule.warmup_epochs_done, schedule.art_epochs_done) == (2, 5)
    assert (schedule.finetune_epochs_done, schedule.epochs_seen) == (3, 10)


def test_schedule_buffer_best_candidate_and_stopping_rule():
    schedule = ARTSchedule(0, 1e-4, 1.1, 2, 1)
    assert _art_epoch(schedule, 0.5) is None  # [0.5] -> best epoch 0
    assert (schedule.best.epoch, schedule.best_mean_pruned_accuracy) == (0, 0.5)
    _art_epoch(schedule, 0.7)  # [0.5, 0.7]: 0.6 > 0.5 (epoch 0's own)
    assert schedule.best.epoch == 1  # middle: min(len - 1, b) = 1
    assert schedule.best_mean_pruned_accuracy == pytest.approx(0.6)
    _art_epoch(schedule, 0.3)  # [0.5, 0.7, 0.3]: 0.5 < 0.7 (epoch 1's own)
    assert schedule.best.epoch == 1
    _art_epoch(schedule, 0.95)  # [0.7, 0.3, 0.95]: 0.65 < 0.7: still epoch 1
    assert schedule.best.epoch == 1 and schedule.best.payload == "weights of epoch 1"
    assert [(c.epoch, c.pruned_accuracy) for c in schedule.buffer] == [
        (1, 0.7),
        (2, 0.3),
        (3, 0.95),
    ]
    assert schedule.coefficient == pytest.approx(1e-4 * 1.1**4)
    # [0.3, 0.95, 0.95]: 0.7333 > 0.7 -> epoch 3, and 0.7333 > dense 0.7.
    assert _art_epoch(schedule, 0.95, dense=0.7) == "rule"
    assert schedule.phase == "finetune" and schedule.termination_epoch == 4
    assert schedule.best.epoch == 3 and schedule.coefficient == 0.0
    assert schedule.buffer == [] and not schedule.stopped_by_budget
    assert schedule.end_epoch("finetune") is None
    assert schedule.end_epoch("finetune") == "finetune"
    assert schedule.phase == "done" and schedule.epochs_seen == 7


def test_schedule_compares_the_mean_with_the_best_candidates_own_accuracy():
    # The reference compares the buffer mean with the best's OWN accuracy, and
    # the stored mean goes down at epoch 3 (0.633 -> 0.567). The library's
    # earlier rule (mean against the best MEAN so far, which only rises) kept
    # epoch 1 there: best [0, 0, 1, 1], means [0.6, 0.6, 0.633, 0.633].
    schedule = ARTSchedule(0, 1e-4, 1.1, 1, 1)
    seen = []
    for pruned in [0.6, 0.3, 1.0, 0.4]:
        assert _art_epoch(schedule, pruned, dense=0.9) is None
        seen.append((schedule.best.epoch, schedule.best_mean_pruned_accuracy))
    assert [epoch for epoch, _ in seen] == [0, 0, 1, 2]
    assert [mean for _, mean in seen] == pytest.approx(
        [0.6, 0.6, 0.6333, 0.5667], abs=1e-4
    )


def test_schedule_middle_element_while_a_wide_buffer_fills():
    # b = 2: with 3 of 5 entries the reference's middle is min(3 - 1, 2) = 2
    # (the newest); `len // 2`, the library's earlier index, is 1.
    schedule = ARTSchedule(0, 1e-4, 1.1, 1, 2)
    for pruned in [0.1, 0.2, 0.9]:
        _art_epoch(schedule, pruned)
    assert schedule.best.epoch == 2
    assert schedule.best_mean_pruned_accuracy == pytest.approx(0.4)


def test_schedule_stops_on_the_stored_mean_not_the_best_accuracy():
    # The best candidate's own accuracy (1.0) exceeds the dense 0.6, its
    # stored mean (0.567) does not: ART goes on.
    schedule = ARTSchedule(0, 1e-4, 1.1, 1, 1)
    for pruned in [0.6, 0.3, 1.0]:
        _art_epoch(schedule, pruned, dense=0.9)
    assert _art_epoch(schedule, 0.4, dense=0.6) is None
    assert schedule.best.pruned_accuracy == 1.0
    # Only a buffer mean above 1.0 would replace it: ART goes on to the budget.
    assert _art_epoch(schedule, 0.7, dense=0.6) is None
    assert schedule.best_mean_pruned_accuracy == pytest.approx(0.5667, abs=1e-4)


def test_schedule_rule_needs_strictly_more_than_the_dense_accuracy():
    schedule = ARTSchedule(0, 1e-4, 1.1, 1, 0)
    assert _art_epoch(schedule, 0.8, dense=0.8) is None
    assert _art_epoch(schedule, 0.8000001, dense=0.8) == "rule"


def test_schedule_buffer_size_zero_keeps_single_epochs():
    schedule = ARTSchedule(0, 1e-4, 1.1, 1, 0)
    for pruned in [0.2, 0.6, 0.4]:
        _art_epoch(schedule, pruned)
    assert [(c.epoch, c.pruned_accuracy) for c in schedule.buffer] == [(2, 0.4)]
    assert schedule.best.epoch == 1 and schedule.best_mean_pruned_accuracy == 0.6


def test_schedule_epoch_budget_ends_art_and_sets_the_finetune_length():
    schedule = ARTSchedule(1, 1e-4, 1.1, 2, 1, epoch_budget=6)
    schedule.end_epoch("warmup")
    reasons = [_art_epoch(schedule, 0.1) for _ in range(3)]
    assert reasons == [None, None, "budget"]  # 6 - 1 - 3 = 2 epochs remain
    assert schedule.stopped_by_budget and schedule.finetune_length == 2
    early = ARTSchedule(1, 1e-4, 1.1, 2, 1, epoch_budget=6)
    early.end_epoch("warmup")
    assert _art_epoch(early, 0.9, dense=0.5) == "rule"
    assert early.finetune_length == 4 and not early.stopped_by_budget


def test_schedule_without_finetuning_is_done_when_art_ends():
    schedule = ARTSchedule(0, 1e-4, 1.1, 0, 1)
    assert _art_epoch(schedule, 0.9, dense=0.5) == "rule"
    assert schedule.phase == "done"


def test_schedule_state_round_trip_keeps_the_decisions():
    schedule = ARTSchedule(0, 1e-4, 1.1, 2, 1)
    for pruned in [0.5, 0.7, 0.3, 0.95]:
        _art_epoch(schedule, pruned)
    copy = ARTSchedule(0, 1e-4, 1.1, 2, 1)
    copy.set_state(schedule.get_state(), schedule.candidates())
    assert copy.get_state() == schedule.get_state()
    assert copy.best.payload == "weights of epoch 1"
    assert _art_epoch(copy, 0.95, dense=0.7) == _art_epoch(schedule, 0.95, dense=0.7)
    assert copy.get_state() == schedule.get_state()


def test_schedule_refuses_art_epochs_outside_art():
    schedule = ARTSchedule(1, 1e-4, 1.1, 1, 1)
    with pytest.raises(RuntimeError, match="phase is 'warmup'"):
        schedule.record_art_epoch(0.5, 0.9)


@pytest.mark.parametrize(
    "kwargs, argument",
    [
        (dict(warmup_epochs=-1), "warmup_epochs"),
        (dict(warmup_epochs=2.0), "warmup_epochs"),
        (dict(lambda_init=0.0), "lambda_init"),
        (dict(lambda_init=math.inf), "lambda_init"),
        (dict(eta=1.0), "eta"),
        (dict(eta=True), "eta"),
        (dict(finetune_epochs=-1), "finetune_epochs"),
        (dict(buffer_size=-1), "buffer_size"),
        (dict(epoch_budget=4), "epoch_budget"),  # 2 + 1 + 2 = 5 at least
    ],
)
def test_schedule_bad_arguments(kwargs, argument):
    settings = dict(
        warmup_epochs=2, lambda_init=1e-4, eta=1.1, finetune_epochs=2, buffer_size=1
    )
    with pytest.raises(ValueError, match=f"argument `{argument}`"):
        ARTSchedule(**dict(settings, **kwargs))


@pytest.mark.parametrize(
    "length, factors",
    [
        (4, [1, 1, 0.1, 0.01]),
        (160, None),
    ],
)
def test_finetune_lr_factor_drops_at_half_and_three_quarters(length, factors):
    got = [finetune_lr_factor(e, length) for e in range(length)]
    if factors is None:  # the reference: x0.1 at epochs 80 and 120 of 160
        assert got.index(0.1) == 80 and got.index(0.1 * 0.1) == 120
    else:
        assert got == pytest.approx(factors)
