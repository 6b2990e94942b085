r"""Training-step overhead of HyperSparse and AdaptiveL1 on ResNet-32, on CPU.

Measures, in one process and with the configurations interleaved:

- the median training-step time of the reference ResNet-32 (`models.resnet(32)`,
  CIFAR shape, random data, batch 64, SGD(0.1, momentum 0.9)) with HyperSparse
  attached (coefficient > 0) and its statistics refreshed before EVERY step by
  a callback whose `on_train_batch_begin` calls `update_statistics()` (as the
  ART callback does; the refresh is inside the timed step), divided by the
  median step time of the same network without a regularizer; the same ratio
  for AdaptiveL1; and, to split the HyperSparse overhead, the ratio for
  HyperSparse with frozen statistics (the per-tensor tanh loss only);
- the time of one `update_statistics()` over ResNet-32's 1.86M kernel weights
  and over VGG-19's 20M, against a full `tf.sort` and `tf.math.top_k` of the
  same magnitudes.

Each configuration has its own model (same seed, same initial weights), so
each has its own compiled train function. Every round runs one short `fit` per
configuration, in an order rotated from round to round; a ratio is taken per
round from the medians of per-step times, and reported as the median over the
rounds with its min-max spread.

Run from the repository root (about 10-15 minutes on 2 shared CPU cores):

    PYTHONPATH=. python3 benchmarks/regularizer_overhead.py

Results go to `benchmarks/results/regularizer_overhead.md` (see `--output`).
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import datetime  # noqa: E402
import pathlib  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from absl import app  # noqa: E402
from absl import flags  # noqa: E402

import hypersparse_tf  # noqa: E402
from hypersparse_tf import models  # noqa: E402

_ROUNDS = flags.DEFINE_integer("rounds", 8, "Interleaved rounds of timed fits.")
_STEPS = flags.DEFINE_integer("steps", 6, "Timed training steps per fit.")
_WARMUP_STEPS = flags.DEFINE_integer(
    "warmup_steps", 2, "Untimed steps per configuration before the rounds."
)
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 64, "Training batch size.")
_PRUNE_RATE = flags.DEFINE_float("prune_rate", 0.9, "HyperSparse prune rate.")
_COEFFICIENT = flags.DEFINE_float(
    "coefficient", 5e-6, "Regularization coefficient (> 0)."
)
_FROZEN = flags.DEFINE_boolean(
    "frozen",
    True,
    "Also time HyperSparse with statistics computed once and never refreshed, "
    "to split its overhead into loss and refresh.",
)
_STAT_REPEATS = flags.DEFINE_integer(
    "stat_repeats", 5, "Timed calls per statistics measurement."
)
_VGG = flags.DEFINE_boolean(
    "vgg", True, "Also time the statistics over VGG-19's 20M weights."
)
_SEED = flags.DEFINE_integer("seed", 0, "Seed of weights and data.")
_TARGET = flags.DEFINE_float(
    "target", 1.10, "Target: HyperSparse step time / plain step time."
)
_OUTPUT = flags.DEFINE_string(
    "output",
    str(pathlib.Path(__file__).parent / "results" / "regularizer_overhead.md"),
    "Markdown file to write the results to.",
)

_FLAGS_IN_COMMAND = (
    _ROUNDS,
    _STEPS,
    _WARMUP_STEPS,
    _BATCH_SIZE,
    _PRUNE_RATE,
    _COEFFICIENT,
    _FROZEN,
    _STAT_REPEATS,
    _VGG,
    _SEED,
    _TARGET,
    _OUTPUT,
)

PLAIN = "plain (no regularizer)"
HYPERSPARSE = "HyperSparse, refreshed every step"
FROZEN = "HyperSparse, statistics frozen"
L1 = "AdaptiveL1"


class StepTimer(keras.callbacks.Callback):
    """Records the wall time of every training batch, begin to end."""

    def __init__(self):
        super().__init__()
        self.times = []
        self._start = None

    def on_train_batch_begin(self, batch, logs=None):
        self._start = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        self.times.append(time.perf_counter() - self._start)


class RefreshStatistics(keras.callbacks.Callback):
    """Refreshes the regularizer's statistics before every batch, as ART will."""

    def __init__(self, regularizer):
        super().__init__()
        self.regularizer = regularizer

    def on_train_batch_begin(self, batch, logs=None):
        self.regularizer.update_statistics()


def build_configurations(names, seed, prune_rate, coefficient):
    """Returns `{name: (model, callbacks)}`, one compiled ResNet-32 per name."""
    reference = None
    configurations = {}
    for name in names:
        keras.utils.set_random_seed(seed)
        model = models.resnet(32)
        if reference is None:
            reference = model.get_weights()
        else:
            model.set_weights(reference)
        callbacks = []
        if name in (HYPERSPARSE, FROZEN):
            regularizer = hypersparse_tf.HyperSparse(prune_rate, coefficient)
            hypersparse_tf.attach(model, regularizer)
            regularizer.update_statistics()
            if name == HYPERSPARSE:
                callbacks.append(RefreshStatistics(regularizer))
        elif name == L1:
            regularizer = hypersparse_tf.AdaptiveL1(coefficient)
            hypersparse_tf.attach(model, regularizer)
            callbacks.append(RefreshStatistics(regularizer))  # a no-op, as in ART
        model.compile(
            optimizer=keras.optimizers.SGD(0.1, momentum=0.9),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        )
        configurations[name] = (model, callbacks)
    return configurations


def timed_fit(model, callbacks, images, labels, batch_size):
    """One `fit` over `images`; returns the per-step times in seconds."""
    timer = StepTimer()
    # The timer comes first: its begin hook runs before the refresh.
    model.fit(
        images,
        labels,
        batch_size=batch_size,
        epochs=1,
        shuffle=False,
        verbose=0,
        callbacks=[timer, *callbacks],
    )
    return timer.times


def measure_steps(configurations, rounds, steps, warmup_steps, batch_size, seed):
    """Interleaved rounds; returns `{name: [per-round list of step times]}`."""
    rng = np.random.default_rng(seed)
    size = max(steps, warmup_steps) * batch_size
    images = rng.normal(size=(size, 32, 32, 3)).astype("float32")
    labels = rng.integers(0, 10, size=size)
    names = list(configurations)
    for name in names:
        model, callbacks = configurations[name]
        timed_fit(
            model,
            callbacks,
            images[: warmup_steps * batch_size],
            labels[: warmup_steps * batch_size],
            batch_size,
        )
    times = {name: [] for name in names}
    for round_index in range(rounds):
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            model, callbacks = configurations[name]
            times[name].append(
                timed_fit(
                    model,
                    callbacks,
                    images[: steps * batch_size],
                    labels[: steps * batch_size],
                    batch_size,
                )
            )
        medians = ", ".join(
            f"{name}: {statistics.median(times[name][-1]):.3f} s" for name in names
        )
        print(
            f"round {round_index + 1}/{rounds} (load {os.getloadavg()[0]:.2f}): "
            f"{medians}",
            flush=True,
        )
    return times


def median_call_time(function, repeats):
    """Median wall time of `function()` over `repeats` calls after a first one."""
    function()
    durations = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        durations.append(time.perf_counter() - start)
    return statistics.median(durations)


def measure_statistics(model, prune_rate, repeats):
    """Times `update_statistics()`, a full sort and top_k over `model`'s kernels.

    All three read the same kernels; the sort and top_k include the same
    flattening and absolute value, and top_k selects the `N - floor(kappa N)`
    largest magnitudes, whose minimum is the threshold.
    """
    regularizer = hypersparse_tf.HyperSparse(prune_rate)
    kernels = hypersparse_tf.attach(model, regularizer)
    size = sum(int(np.prod(k.shape)) for k in kernels)
    kept = size - int(np.floor(prune_rate * size))

    def magnitudes():
        return tf.abs(tf.concat([tf.reshape(k, [-1]) for k in kernels], 0))

    sort = tf.function(lambda: tf.sort(magnitudes())[size - kept])
    top_k = tf.function(lambda: tf.reduce_min(tf.math.top_k(magnitudes(), kept)[0]))
    threshold = None

    def update():
        nonlocal threshold
        regularizer.update_statistics()
        threshold = regularizer.threshold.numpy()

    result = {
        "size": size,
        "update_statistics": median_call_time(update, repeats),
        "sort": median_call_time(lambda: sort().numpy(), repeats),
        "top_k": median_call_time(lambda: top_k().numpy(), repeats),
    }
    if not threshold == sort().numpy() == top_k().numpy():
        raise AssertionError("update_statistics, sort and top_k disagree.")
    return result


def summarize(times):
    """Returns rows `(name, median step time over all rounds, per-round ratios)`."""
    plain = [statistics.median(t) for t in times[PLAIN]]
    rows = []
    for name, per_round in times.items():
        medians = [statistics.median(t) for t in per_round]
        ratios = [m / p for m, p in zip(medians, plain, strict=True)]
        pooled = statistics.median([s for t in per_round for s in t])
        rows.append((name, pooled, ratios))
    return rows


def _fmt_ms(seconds):
    return f"{seconds * 1e3:,.1f} ms"


def write_markdown(path, command, rows, stats, target, settings, loads, elapsed):
    """Writes the results as Markdown to `path`."""
    lines = [
        "# Regularizer overhead per training step (ResNet-32, CPU)",
        "",
        "Produced by:",
        "",
        "```",
        command,
        "```",
        "",
        f"- Date: {datetime.datetime.now().isoformat(timespec='seconds')}; "
        f"total run time {elapsed / 60:.1f} min.",
        f"- Machine: {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPU cores, SHARED with other engineers running "
        "TensorFlow at the same time (load average "
        f"{loads[0]:.2f} at start, {loads[1]:.2f} at end); no GPU. TensorFlow "
        f"{tf.__version__}, Keras {keras.__version__}, Python "
        f"{platform.python_version()}; default thread pools, `jit_compile` "
        "left at Keras' default (off on CPU).",
        f"- Settings: {settings}.",
        "- Step time: wall time from `on_train_batch_begin` to "
        "`on_train_batch_end` of the first callback, so it includes the "
        "`update_statistics()` call of the refresh callback. Each configuration "
        "is its own ResNet-32 (same seed and initial weights, own compiled "
        "train function), random CIFAR-shaped data.",
        "- Ratio: per round, median step time of the configuration / median "
        "step time of the plain model in the same round; reported as the "
        "median over rounds, with the min and max over rounds.",
        "",
        "## Step time",
        "",
        "| configuration | median step | ratio to plain (median over rounds) "
        "| spread over rounds (min - max) | target | meets target |",
        "|---|---|---|---|---|---|",
    ]
    for name, pooled, ratios in rows:
        ratio = statistics.median(ratios)
        if name == HYPERSPARSE:
            target_cell = f"<= {target:.2f}"
            verdict = "yes" if ratio <= target else "**no**"
        else:
            target_cell, verdict = "", ""
        lines.append(
            f"| {name} | {_fmt_ms(pooled)} | {ratio:.3f} | "
            f"{min(ratios):.3f} - {max(ratios):.3f} | {target_cell} | {verdict} |"
        )
    lines += [
        "",
        "Per-round ratios to plain:",
        "",
        "| configuration | "
        + " | ".join(f"r{i + 1}" for i in range(len(rows[0][2])))
        + " |",
        "|---|" + "---|" * len(rows[0][2]),
    ]
    for name, _, ratios in rows:
        lines.append(f"| {name} | " + " | ".join(f"{r:.3f}" for r in ratios) + " |")
    lines += [
        "",
        "## Cost of the statistics",
        "",
        "Median of repeated calls after a first (compiled) call. "
        "`update_statistics()` computes the exact threshold (radix selection), "
        "`A = sum|w|` and `T = sum tanh(s|w|)` and assigns three variables; "
        "`tf.sort` and `tf.math.top_k` compute the threshold only (same "
        "flatten + abs, inside a `tf.function`).",
        "",
        "| weights | update_statistics() | tf.sort (full) | tf.math.top_k |",
        "|---|---|---|---|",
    ]
    for label, result in stats.items():
        lines.append(
            f"| {label}: {result['size']:,} | "
            f"{_fmt_ms(result['update_statistics'])} | {_fmt_ms(result['sort'])} | "
            f"{_fmt_ms(result['top_k'])} |"
        )
    lines += ["", "## Where the HyperSparse time goes", ""]
    lines += analysis(rows, stats)
    pathlib.Path(path).parent.mkdir(parents=True, exist_ok=True)
    pathlib.Path(path).write_text("\n".join(lines) + "\n")


def analysis(rows, stats):
    """Markdown bullets splitting the HyperSparse overhead per step."""
    by_name = {name: (pooled, ratios) for name, pooled, ratios in rows}
    plain = by_name[PLAIN][0]
    lines = []
    refresh = stats.get("ResNet-32")
    if refresh is not None:
        lines.append(
            f"- One refresh (`update_statistics()`, ResNet-32) costs "
            f"{_fmt_ms(refresh['update_statistics'])}, "
            f"{refresh['update_statistics'] / plain:.1%} of the plain step."
        )
    if FROZEN in by_name:
        frozen = statistics.median(by_name[FROZEN][1])
        full = statistics.median(by_name[HYPERSPARSE][1])
        lines.append(
            f"- The per-tensor tanh loss and its gradient alone (statistics "
            f"frozen): ratio {frozen:.3f}; with the refresh every step: "
            f"{full:.3f}."
        )
    if L1 in by_name:
        lines.append(
            "- AdaptiveL1 (sum |w| per kernel, no refresh): ratio "
            f"{statistics.median(by_name[L1][1]):.3f}."
        )
    lines.append(
        "- Differences of a few percent are within the noise of this shared "
        "machine: compare the spread over rounds."
    )
    return lines


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    if _COEFFICIENT.value <= 0:
        raise app.UsageError(
            f"--coefficient must be > 0. Received: {_COEFFICIENT.value}"
        )
    command = " ".join(
        ["PYTHONPATH=. python3 benchmarks/regularizer_overhead.py"]
        + [
            f"--{holder.name}={holder.value}"
            for holder in _FLAGS_IN_COMMAND
            if holder.value != flags.FLAGS[holder.name].default
        ]
    )
    start = time.perf_counter()
    load_start = os.getloadavg()[0]
    names = [PLAIN, HYPERSPARSE, L1] + ([FROZEN] if _FROZEN.value else [])
    configurations = build_configurations(
        names, _SEED.value, _PRUNE_RATE.value, _COEFFICIENT.value
    )
    times = measure_steps(
        configurations,
        _ROUNDS.value,
        _STEPS.value,
        _WARMUP_STEPS.value,
        _BATCH_SIZE.value,
        _SEED.value,
    )
    rows = summarize(times)
    del configurations
    stats = {
        "ResNet-32": measure_statistics(
            models.resnet(32), _PRUNE_RATE.value, _STAT_REPEATS.value
        )
    }
    print(f"statistics ResNet-32: {stats['ResNet-32']}", flush=True)
    if _VGG.value:
        stats["VGG-19"] = measure_statistics(
            models.vgg19_bn(), _PRUNE_RATE.value, _STAT_REPEATS.value
        )
        print(f"statistics VGG-19: {stats['VGG-19']}", flush=True)
    settings = (
        f"batch {_BATCH_SIZE.value}, SGD(0.1, momentum 0.9), "
        f"{_ROUNDS.value} rounds x {_STEPS.value} timed steps per configuration "
        f"after {_WARMUP_STEPS.value} warm-up steps, prune rate "
        f"{_PRUNE_RATE.value}, coefficient {_COEFFICIENT.value}, "
        f"{_STAT_REPEATS.value} timed calls per statistics measurement"
    )
    write_markdown(
        _OUTPUT.value,
        command,
        rows,
        stats,
        _TARGET.value,
        settings,
        (load_start, os.getloadavg()[0]),
        time.perf_counter() - start,
    )
    print(pathlib.Path(_OUTPUT.value).read_text())


if __name__ == "__main__":
    app.run(main)
