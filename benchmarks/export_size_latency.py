r"""What sparsity buys on the device: sizes, LiteRT latency, TFLite Micro arena.

For each model (`--models`) and sparsity (`--sparsities`): trains the model on
scikit-learn's digits (8x8 images, 1,400 training and 397 test images of a
random split), prunes it gradually by global magnitude (`--prune_steps`, with
`global_magnitude_masks` and `apply_masks`, each step followed by fine-tuning
with the masks fixed), and at each sparsity exports every artifact and runs it
in its interpreter (`hypersparse_tf.export`):

- sizes (raw and gzip), non-zero parameters, accuracy and agreement with the
  Keras model of: the `.keras` file, the mobile float32 model with dense and
  with sparse encoding (LiteRT), the micro int8 model before and after
  `shrink` (TFLite Micro), with the smallest TFLite Micro arena of each;
- LiteRT latency of mobile float dense vs sparse: median over interleaved runs,
  batch 1, one thread, default op resolver (XNNPACK on), repeated
  (`--latency_repeats`) to show the spread of the sparse / dense ratio.

Run from the repository root (about 3-4 minutes on 2 shared CPU cores):

    PYTHONPATH=. python3 benchmarks/export_size_latency.py

Results go to `benchmarks/results/export_size_latency.md` (see `--output`).
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import datetime  # noqa: E402
import importlib.metadata  # noqa: E402
import pathlib  # noqa: E402
import platform  # noqa: E402
import time  # noqa: E402

import keras  # noqa: E402
import numpy as np  # noqa: E402
from absl import app  # noqa: E402
from absl import flags  # noqa: E402
from absl import logging  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402

import hypersparse_tf  # noqa: E402
from hypersparse_tf import export  # noqa: E402
from hypersparse_tf import models  # noqa: E402
from hypersparse_tf.shrink import shrink  # noqa: E402

_MODELS = flags.DEFINE_list(
    "models",
    ["lenet_300_100", "small_cnn"],
    "Models of `hypersparse_tf.models` to run, on 8x8x1 digits.",
)
_SPARSITIES = flags.DEFINE_list(
    "sparsities", ["0", "0.9", "0.98", "0.99"], "Fractions of kernel weights pruned."
)
_STEPS = flags.DEFINE_list(
    "prune_steps",
    ["0.5", "0.75", "0.9", "0.95", "0.98", "0.99"],
    "Gradual pruning: sparsities reached one after the other, each followed by "
    "fine-tuning; `--sparsities` are measured on the way.",
)
_EPOCHS = flags.DEFINE_integer("epochs", 30, "Dense training epochs (Adam 1e-3).")
_FINETUNE_EPOCHS = flags.DEFINE_integer(
    "finetune_epochs",
    10,
    "Fine-tuning epochs with the masks fixed after each pruning step (Adam 1e-3).",
)
_CALIBRATION = flags.DEFINE_integer(
    "calibration_samples", 300, "Training images calibrating the int8 models."
)
_LATENCY_RUNS = flags.DEFINE_integer(
    "latency_runs", 2000, "Timed interleaved LiteRT runs per model and repeat."
)
_LATENCY_REPEATS = flags.DEFINE_integer(
    "latency_repeats",
    5,
    "Latency measurements (fresh interpreters each); the table shows the median "
    "of their medians and the spread of the sparse / dense ratio.",
)
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the split, weights and training.")
_OUTPUT = flags.DEFINE_string(
    "output",
    str(pathlib.Path(__file__).parent / "results" / "export_size_latency.md"),
    "Markdown file to write the results to.",
)


def load_data(seed):
    """Digits as (N, 8, 8, 1) floats in [0, 1], split 1,400 / 397 at random."""
    data = load_digits()
    images = (data.images / 16.0).astype("float32")[..., None]
    order = np.random.default_rng(seed).permutation(len(images))
    train, test = order[:1400], order[1400:]
    return images[train], data.target[train], images[test], data.target[test]


def train_dense(name, data, epochs, seed):
    x_train, y_train, _, _ = data
    keras.utils.set_random_seed(seed)
    model = getattr(models, name)(input_shape=(8, 8, 1))
    _compile(model)
    model.fit(x_train, y_train, epochs=epochs, batch_size=64, verbose=0)
    return model


def _compile(model):
    model.compile(
        keras.optimizers.Adam(1e-3),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )


def prune_and_finetune(model, sparsity, data, epochs, seed):
    """Prunes `model` in place to `sparsity`, then fine-tunes with fixed masks.

    Weights pruned before are zero, the smallest magnitudes: they stay pruned.
    """
    x_train, y_train, _, _ = data
    masks = hypersparse_tf.global_magnitude_masks(model, sparsity)
    hypersparse_tf.apply_masks(model, masks)
    keras.utils.set_random_seed(seed)
    _compile(model)
    keep_masks = keras.callbacks.LambdaCallback(
        on_train_batch_end=lambda batch, logs: hypersparse_tf.apply_masks(model, masks)
    )
    model.fit(
        x_train,
        y_train,
        epochs=epochs,
        batch_size=64,
        verbose=0,
        callbacks=[keep_masks],
    )


def measure(model, data, calibration_samples, latency_runs, latency_repeats):
    """Deployment report plus LiteRT latency of mobile float dense vs sparse."""
    x_train, _, x_test, y_test = data
    report = export.deployment_report(
        model, x_train[:calibration_samples], x_test, y_test
    )
    mobile = {
        "dense": export.to_tflite(model, "mobile", sparse=False),
        "sparse": export.to_tflite(model, "mobile", sparse=True),
    }
    repeats = [
        export.litert_latency(mobile, num_runs=latency_runs)
        for _ in range(latency_repeats)
    ]
    ratios = [times["sparse"] / times["dense"] for times in repeats]
    latency = {
        name: float(np.median([times[name] for times in repeats])) for name in mobile
    }
    latency["ratio"] = float(np.median(ratios))
    latency["ratio_range"] = (min(ratios), max(ratios))
    return report, latency, shrink(model)


def _units(model):
    return ", ".join(
        f"{layer.name} {getattr(layer, 'units', None) or layer.filters}"
        for layer in model.layers
        if isinstance(layer, keras.layers.Dense | keras.layers.Conv2D)
    )


def run(
    model_names,
    sparsities,
    steps,
    epochs,
    finetune_epochs,
    calibration,
    runs,
    repeats,
    seed,
):
    """Trains each model, prunes it gradually and measures it at `sparsities`."""
    data = load_data(seed)
    schedule = sorted({*steps, *sparsities} - {0.0})
    schedule = [step for step in schedule if step <= max(sparsities)]
    results = []
    for name in model_names:
        model = train_dense(name, data, epochs, seed)
        for step in [0.0, *schedule]:
            if step > 0:
                prune_and_finetune(model, step, data, finetune_epochs, seed)
            if step not in sparsities:
                continue
            start = time.time()
            report, latency, small = measure(model, data, calibration, runs, repeats)
            results.append(
                {
                    "model": name,
                    "sparsity": step,
                    "measured_sparsity": hypersparse_tf.sparsity(model),
                    "report": report,
                    "latency": latency,
                    "units_before": _units(model),
                    "units_after": _units(small),
                    "params_before": model.count_params(),
                    "params_after": small.count_params(),
                }
            )
            print(f"{name} sparsity {step}: measured in {time.time() - start:.0f} s")
    return results


def _versions():
    names = ("tensorflow", "keras", "ai-edge-litert", "tflite-micro")
    return ", ".join(f"{n} {importlib.metadata.version(n)}" for n in names)


def write_markdown(path, results, settings, elapsed):
    lines = [
        "# Export: sizes, LiteRT latency and TFLite Micro arena vs sparsity",
        "",
        "Produced by:",
        "",
        "```",
        "PYTHONPATH=. python3 benchmarks/export_size_latency.py",
        "```",
        "",
        f"- Date: {datetime.datetime.now().isoformat(timespec='seconds')}; total "
        f"run time {elapsed / 60:.1f} min.",
        f"- Machine: {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPU cores, shared with other engineers running "
        f"TensorFlow at the same time; no GPU. {_versions()}.",
        f"- Settings: {settings}",
        "- Models: `hypersparse_tf.models.lenet_300_100` (Flatten, Dense 300 + "
        "ReLU, Dense 100 + ReLU, Dense 10) and `small_cnn` (two blocks of 3x3 "
        "conv without bias + BN + ReLU + 2x2 max-pool with 16 and 32 filters, "
        "Flatten, Dense 10), input 8x8x1, trained on digits; then pruned "
        "gradually by global magnitude (`global_magnitude_masks`) with "
        "fine-tuning after each step (a baseline, not ART + HyperSparse).",
        "- Sizes in bytes. Latency: LiteRT, batch 1, one thread, default op "
        "resolver (XNNPACK), median over interleaved runs of dense and sparse, "
        "then the median over repeats; the sparse / dense ratio is the median "
        "of the per-repeat ratios, with their min-max range (a few microseconds "
        "on a shared machine: read ratios within that range as equal). "
        "Arena: smallest TFLite Micro tensor arena (bisection, host build). "
        "Agreement: fraction of test images whose argmax equals the Keras "
        "model's. Accuracy on the 397 test images.",
        "",
        "## Summary",
        "",
        "| model | sparsity | Keras acc | mobile float | mobile sparse | float "
        "latency dense | float latency sparse | sparse / dense (range) | micro int8 "
        "| arena "
        "| micro int8 shrunk | arena shrunk | micro shrunk acc / agreement |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for result in results:
        rows = {row["artifact"]: row for row in result["report"]["artifacts"]}
        latency = result["latency"]
        lines.append(
            f"| {result['model']} | {result['measured_sparsity']:.2%} | "
            f"{rows['keras']['accuracy']:.2%} | {rows['mobile_float']['bytes']:,} | "
            f"{rows['mobile_sparse']['bytes']:,} | {latency['dense'] * 1e6:.1f} us | "
            f"{latency['sparse'] * 1e6:.1f} us | "
            f"{latency['ratio']:.2f} ({latency['ratio_range'][0]:.2f}-"
            f"{latency['ratio_range'][1]:.2f}) | "
            f"{rows['micro_int8']['bytes']:,} | "
            f"{rows['micro_int8']['arena_bytes']:,} | "
            f"{rows['micro_int8_shrunk']['bytes']:,} | "
            f"{rows['micro_int8_shrunk']['arena_bytes']:,} | "
            f"{rows['micro_int8_shrunk']['accuracy']:.2%} / "
            f"{rows['micro_int8_shrunk']['agreement']:.2%} |"
        )
    lines += ["", "## What `shrink` removed", ""]
    lines += [
        "| model | sparsity | units/filters before | after | parameters before "
        "| after |",
        "|---|---:|---|---|---:|---:|",
    ]
    for result in results:
        lines.append(
            f"| {result['model']} | {result['measured_sparsity']:.2%} | "
            f"{result['units_before']} | {result['units_after']} | "
            f"{result['params_before']:,} | {result['params_after']:,} |"
        )
    lines += ["", "## Deployment reports", ""]
    for result in results:
        lines += [
            f"### {result['model']}, sparsity {result['measured_sparsity']:.2%}",
            "",
            export.report_markdown(result["report"]),
        ]
    pathlib.Path(path).write_text("\n".join(lines))


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    logging.set_verbosity(logging.WARNING)  # TF's SavedModel export chatter.
    sparsities = [float(value) for value in _SPARSITIES.value]
    steps = [float(value) for value in _STEPS.value]
    start = time.time()
    results = run(
        _MODELS.value,
        sparsities,
        steps,
        _EPOCHS.value,
        _FINETUNE_EPOCHS.value,
        _CALIBRATION.value,
        _LATENCY_RUNS.value,
        _LATENCY_REPEATS.value,
        _SEED.value,
    )
    settings = (
        f"{_EPOCHS.value} dense epochs, then pruning steps to the sparsities "
        f"{', '.join(_STEPS.value)} in turn, each followed by "
        f"{_FINETUNE_EPOCHS.value} fine-tuning epochs with the masks fixed (Adam "
        f"1e-3, batch 64), {_CALIBRATION.value} calibration images, "
        f"latency: {_LATENCY_REPEATS.value} repeats of {_LATENCY_RUNS.value} timed "
        f"interleaved runs per model, seed {_SEED.value}."
    )
    write_markdown(_OUTPUT.value, results, settings, time.time() - start)
    print(f"Wrote {_OUTPUT.value}")


if __name__ == "__main__":
    app.run(main)
