r"""What each structure of sparsity buys on a board and on a phone.

For each model and data set (real data only):

- `lenet_300_100` on Fashion-MNIST (`--fmnist_train`/`--fmnist_test` images);
- `small_cnn` and `mobilenet_style` on a class-balanced CIFAR-10 subset
  decoded from the JPEG archive (`--cifar_train`/`--cifar_test` images),

it trains and measures:

- `dense`: the model trained for the ART runs' whole budget (`--max_epochs`
  epochs, same optimizer and data);
- `hs_weight`, `hs_channel`, `hs_block`: ART + HyperSparse with
  `structure="weight"` (the paper's), `"channel"` and `"block"` (1x4 blocks of
  the Dense kernels: LeNet only), through `experiment.train_and_evaluate` (the
  main job's training: SGD, the embedded ART settings, `--max_epochs` in all
  as `epoch_budget`, so that every run fine-tunes a pruned model);
- `l1_filter`: L1-norm filter pruning (Li et al., 2017) as the structured
  baseline: from the dense model, in every layer the same fraction of output
  channels/units with the smallest L1 norm goes (with its BatchNorm and
  bias, as channel HyperSparse's masks do), then fine-tuning with the masks
  fixed (`--finetune_epochs`, fresh SGD, ART's fine-tuning learning rates):
  `--max_epochs + --finetune_epochs` epochs in all, against ART's
  `--max_epochs`;
- `tfmot_block`: tensorflow-model-optimization's `prune_low_magnitude` on the
  Dense kernels of the dense LeNet in 1x4 blocks along the input axis
  (tfmot's `block_size=(4, 1)` in Keras' `(in, out)` layout: TFLite transposes
  the kernel, so these are TFLite's 1x4 blocks), its polynomial schedule from
  0 to the rate over the first half of `--finetune_epochs` epochs; weights
  copied back into the Keras 3 model.

Every model then goes through `shrink` and both exports. Columns: Keras test
accuracy; TFLite Micro int8 accuracy (shrunk model, on `--micro_test`
samples); parameters and MACs of the shrunk Keras model; TFLite Micro flash
(model bytes) and smallest arena; host TFLite Micro latency (median over
`--micro_runs` interleaved invokes of all models of one network in one child
process), as a ratio to the dense int8 model; LiteRT float latency (median over
`--litert_runs` interleaved runs, 1 thread, XNNPACK) of the shrunk model and
of the unshrunk model in sparse encoding, as ratios to the dense float model.
For the MobileNet-style CNN the table also gives the fraction of zeros in its
1x1 kernels (XNNPACK's sparse path needs at least 2/3).

    PYTHONPATH=. python3 benchmarks/structured_deployment.py

Results: `benchmarks/results/structured_deployment.md`, `.json` and `.png`.
The JSON is rewritten after every run, so an interrupted run keeps its rows
(`--replot` writes the table and plot from it).
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import datetime  # noqa: E402
import json  # noqa: E402
import pathlib  # noqa: E402
import shlex  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import keras  # noqa: E402
import numpy as np  # noqa: E402
from absl import app  # noqa: E402
from absl import flags  # noqa: E402
from absl import logging  # noqa: E402

import hypersparse_tf  # noqa: E402
from hypersparse_tf import art_schedule  # noqa: E402
from hypersparse_tf import experiment  # noqa: E402
from hypersparse_tf import export  # noqa: E402
from hypersparse_tf import groups  # noqa: E402
from hypersparse_tf import models  # noqa: E402
from hypersparse_tf import optimizers  # noqa: E402
from hypersparse_tf import pipelines  # noqa: E402
from hypersparse_tf import prunable  # noqa: E402

NETWORKS = {
    "lenet_300_100": "fashion_mnist",
    "small_cnn": "cifar10",
    "mobilenet_style": "cifar10",
}
_NETWORKS = flags.DEFINE_list("networks", list(NETWORKS), f"Of {list(NETWORKS)}.")
_WEIGHT_RATES = flags.DEFINE_list("weight_rates", ["0.9", "0.98"], "hs_weight.")
_CHANNEL_RATES = flags.DEFINE_list(
    "channel_rates", ["0.5", "0.75"], "hs_channel and l1_filter (of channels)."
)
_BLOCK_RATES = flags.DEFINE_list(
    "block_rates", ["0.75", "0.9"], "hs_block and tfmot_block (of 1x4 blocks)."
)
_FMNIST_TRAIN = flags.DEFINE_integer("fmnist_train", 12000, "Fashion-MNIST train.")
_FMNIST_TEST = flags.DEFINE_integer("fmnist_test", 2000, "Fashion-MNIST test.")
_CIFAR_TRAIN = flags.DEFINE_integer("cifar_train", 5000, "CIFAR-10 train images.")
_CIFAR_TEST = flags.DEFINE_integer("cifar_test", 1000, "CIFAR-10 test images.")
_WARMUP = flags.DEFINE_integer("warmup_epochs", 8, "ART warm-up epochs.")
_FINETUNE = flags.DEFINE_integer("finetune_epochs", 12, "Fine-tuning epochs.")
_MAX_EPOCHS = flags.DEFINE_integer(
    "max_epochs", 50, "Epoch budget of an ART run (`epoch_budget`)."
)
_MICRO_TEST = flags.DEFINE_integer("micro_test", 500, "Samples run on TFLite Micro.")
_MICRO_RUNS = flags.DEFINE_integer("micro_runs", 30, "Timed TFLite Micro rounds.")
_LITERT_RUNS = flags.DEFINE_integer("litert_runs", 300, "Timed LiteRT rounds.")
_LEARNING_RATES = flags.DEFINE_list(
    "learning_rates",
    ["lenet_300_100=0.1", "small_cnn=0.01", "mobilenet_style=0.03"],
    "SGD learning rate per network (all its methods), network=value. The "
    "CIFAR ones come from 8 dense epochs on the subset at 0.1/0.03/0.01: the "
    "small CNN stays at chance with 0.1 (10.0%; 44.8% at 0.03, 51.3% at "
    "0.01), the MobileNet swings with 0.1 (36.9%, from 38.9% to 20.8% an "
    "epoch apart; 41.8% at 0.03, 34.9% at 0.01).",
)
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the subsets, weights, batches.")
_KEEP = flags.DEFINE_bool(
    "keep", False, "Keep the networks the results JSON already has in full."
)
_DATA_PATH = flags.DEFINE_string(
    "cifar_path", None, "The CIFAR-10 JPEG archive (default: ../shared/data)."
)
_OUTPUT_DIR = flags.DEFINE_string("output_dir", "benchmarks/results", "Results.")
_NAME = flags.DEFINE_string("name", "structured_deployment", "Result file name.")
_REPLOT = flags.DEFINE_bool("replot", False, "Only rewrite the table and plot.")


def _learning_rate(network):
    rates = dict(item.split("=") for item in _LEARNING_RATES.value)
    return float(rates[network])


def _config(network, **changes):
    return experiment.Config(
        dataset=NETWORKS[network],
        data_path=_DATA_PATH.value if NETWORKS[network] == "cifar10" else None,
        train_size=_FMNIST_TRAIN.value
        if network == "lenet_300_100"
        else (_CIFAR_TRAIN.value),
        test_size=_FMNIST_TEST.value
        if network == "lenet_300_100"
        else (_CIFAR_TEST.value),
        model=network,
        warmup_epochs=_WARMUP.value,
        finetune_epochs=_FINETUNE.value,
        max_epochs=_MAX_EPOCHS.value,
        epoch_budget=_MAX_EPOCHS.value,
        learning_rate=_learning_rate(network),
        seed=_SEED.value,
        export=(),
        **changes,
    )


def _data(network):
    config = _config(network)
    data = experiment._load_data(config)
    pipes = pipelines.pipelines(data, config.batch_size, config.augment, config.seed)
    return config, data, pipes


def _arrays(dataset):
    xs, ys = zip(*((x.numpy(), y.numpy()) for x, y in dataset), strict=True)
    return np.concatenate(xs), np.concatenate(ys)


def _compile(model, config):
    model.compile(
        optimizer=optimizers.sgd(
            config.learning_rate, config.momentum, config.weight_decay
        ),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )


def _fit(model, pipes, epochs, callbacks=()):
    model.fit(
        pipes["train"],
        steps_per_epoch=pipes["steps_per_epoch"],
        epochs=epochs,
        verbose=0,
        callbacks=list(callbacks),
    )


def _finetune_schedule(module, initial):
    """ART's fine-tuning learning rates (x0.1 at 50% and at 75% of
    `--finetune_epochs`), for the baselines' fine-tuning: the same as the ART
    runs get (at a constant 0.1, L1 filter pruning at 75% fell from 77.6% right
    after pruning to 49.3% on LeNet; with this schedule it does not)."""
    length = _FINETUNE.value
    return module.callbacks.LearningRateScheduler(
        lambda epoch: initial * art_schedule.finetune_lr_factor(epoch, length)
    )


def train_dense(network, config, data, pipes):
    keras.utils.set_random_seed(config.seed)
    model = experiment.build_model(network, data.num_classes, data.input_shape)
    _compile(model, config)
    _fit(model, pipes, _MAX_EPOCHS.value)
    return model


def train_art(network, config, structure, rate, directory):
    config.structure, config.prune_rate = structure, rate
    summary = experiment.train_and_evaluate(config, directory, verbose=0)
    model = keras.saving.load_model(os.path.join(directory, "model.keras"))
    return model, {"art_epochs": summary["art_epochs"], "phase": summary["phase"]}


def l1_filter_masks(model, rate):
    """Li et al.: per layer, the output channels with the smallest L1 norm of
    the writing kernel go (the same fraction in every layer; one stays), with
    the channel's depthwise filters, biases and BatchNorm parameters."""
    predicate = groups.default_predicate(model, "channel")
    entries = prunable.prunable_layers_and_weights(model, predicate)
    grouping = groups.build_grouping(model, entries, "channel")
    keep = np.ones(grouping.num_groups, bool)
    for (_, layer, weight), kernel in zip(entries, grouping.kernels, strict=True):
        if type(layer).__name__.startswith("Depthwise") or (
            prunable.weight_name(weight) == "depthwise_kernel"
        ):
            continue  # a filter, not a writer: goes with its channel
        value = np.abs(np.asarray(weight.numpy()))
        norms = kernel.local_sums_of_squares(np.sqrt(value), np)  # sum of |w|
        count = min(int(rate * len(norms)), len(norms) - 1)
        keep[kernel.ids[np.argsort(norms, kind="stable")[:count]]] = False
    kept = grouping.element_masks(keep)
    masks = {key: mask for (key, _, _), mask in zip(entries, kept, strict=True)}
    for key, weight in prunable.prunable_weights(model).items():
        masks.setdefault(key, np.ones(weight.shape, bool))
    masks.update(groups.companion_masks(grouping, kept))
    return masks


def train_l1(network, config, data, pipes, dense, rate):
    model = experiment.build_model(network, data.num_classes, data.input_shape)
    model.set_weights(dense.get_weights())
    hypersparse_tf.fix_masks(model, l1_filter_masks(model, rate))
    _compile(model, config)
    schedule = _finetune_schedule(keras, config.learning_rate)
    _fit(model, pipes, _FINETUNE.value, [schedule])
    hypersparse_tf.release_masks(model)
    return model


def train_tfmot_block(network, config, data, pipes, dense, rate):
    from hypersparse_tf import tfmot_interop

    tfmot = tfmot_interop.import_tfmot()
    import tf_keras

    twin = models.lenet_300_100(data.num_classes, data.input_shape, flavour="tf_keras")
    for layer in dense.layers:
        if layer.weights:
            twin.get_layer(layer.name).set_weights(layer.get_weights())
    steps = pipes["steps_per_epoch"]
    # tfmot's own recipe: sparsity grows from 0 over the first half of the
    # fine-tuning, masks updated 4 times an epoch, then stays.
    schedule = tfmot.sparsity.keras.PolynomialDecay(
        0.0,
        rate,
        begin_step=0,
        end_step=steps * max(1, _FINETUNE.value // 2),
        frequency=max(1, steps // 4),
    )

    def wrap(layer):
        if isinstance(layer, tf_keras.layers.Dense):
            return tfmot.sparsity.keras.prune_low_magnitude(
                layer, pruning_schedule=schedule, block_size=(4, 1)
            )
        return layer

    pruned = tf_keras.models.clone_model(twin, clone_function=wrap)
    pruned.compile(
        optimizer=tf_keras.optimizers.SGD(config.learning_rate, momentum=0.9),
        loss=tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    pruned.fit(
        pipes["train"],
        steps_per_epoch=steps,
        epochs=_FINETUNE.value,
        verbose=0,
        callbacks=[
            tfmot.sparsity.keras.UpdatePruningStep(),
            _finetune_schedule(tf_keras, config.learning_rate),
        ],
    )
    stripped = tfmot.sparsity.keras.strip_pruning(pruned)
    model = experiment.build_model(network, data.num_classes, data.input_shape)
    for layer in model.layers:
        if layer.weights:
            layer.set_weights(stripped.get_layer(layer.name).get_weights())
    return model


def _one_by_one_zeros(model):
    zeros = total = 0
    for layer in model.layers:
        if isinstance(layer, keras.layers.Conv2D) and layer.kernel_size == (1, 1):
            kernel = layer.kernel.numpy()
            zeros += int(np.sum(kernel == 0))
            total += kernel.size
    return zeros / total if total else None


def measure(model, x_train, x_test, y_test):
    """Accuracy, cost and the artifacts of one trained model."""
    if not all(np.isfinite(w).all() for w in model.get_weights()):
        raise FloatingPointError("the trained model's weights hold NaN or inf")
    keras_accuracy = float(
        np.mean(np.argmax(model.predict(x_test, verbose=0), -1) == y_test)
    )
    small = hypersparse_tf.shrink(model, verify_inputs=x_test[:64])
    cost = hypersparse_tf.model_cost(small)
    micro = export.to_tflite(small, "micro", x_train[:200])
    n = _MICRO_TEST.value
    micro_out = export.run_micro(micro, x_test[:n])
    row = {
        "keras_accuracy": keras_accuracy,
        "micro_accuracy": float(np.mean(np.argmax(micro_out, -1) == y_test[:n])),
        "parameters": cost["parameters"],
        "macs": cost["macs"],
        "sparsity": hypersparse_tf.sparsity(model),
        "flash_bytes": len(micro),
        "arena_bytes": export.micro_arena_size(micro),
        "one_by_one_zeros": _one_by_one_zeros(model),
    }
    artifacts = {
        "micro": micro,
        "float_shrunk": export.to_tflite(small, "mobile"),
        "float_sparse": export.to_tflite(model, "mobile", sparse=True),
    }
    info = export.inspect_tflite(artifacts["float_sparse"])
    row["sparse_blocks"] = sorted({str(b) for b in info["sparse_blocks"].values()})
    row["densify"] = "DENSIFY" in info["operators"]
    return row, artifacts


def _latencies(rows, artifacts):
    """Latency ratios to the dense model, all models of a network measured
    together (interleaved)."""
    names = list(artifacts)
    micro = export.micro_latency(
        {name: artifacts[name]["micro"] for name in names},
        num_runs=_MICRO_RUNS.value,
    )
    floats = {}
    for name in names:
        floats[f"{name}|shrunk"] = artifacts[name]["float_shrunk"]
        floats[f"{name}|sparse"] = artifacts[name]["float_sparse"]
    litert = export.litert_latency(floats, num_runs=_LITERT_RUNS.value)
    dense = names[0]
    for name in names:
        row = rows[name]
        row["micro_seconds"] = micro[name]
        row["micro_latency_ratio"] = micro[name] / micro[dense]
        row["litert_shrunk_seconds"] = litert[f"{name}|shrunk"]
        row["litert_sparse_seconds"] = litert[f"{name}|sparse"]
        base = litert[f"{dense}|shrunk"]
        row["litert_shrunk_ratio"] = litert[f"{name}|shrunk"] / base
        row["litert_sparse_ratio"] = litert[f"{name}|sparse"] / base


def run_network(network, results, save):
    config, data, pipes = _data(network)
    x_train, _ = _arrays(pipes["train_eval"])
    x_test, y_test = _arrays(pipes["test"])
    rows, artifacts = {}, {}

    def record(name, method, rate, model, start, **extra):
        try:
            row, files = measure(model, x_train, x_test, y_test)
        except FloatingPointError as error:  # reported, not measured
            logging.warning("%s %s diverged: %s", network, name, error)
            results[f"{network}/{name}"] = dict(
                network=network, method=method, rate=rate, diverged=str(error)
            )
            save()
            return
        row.update(
            network=network,
            dataset=config.dataset,
            method=method,
            rate=rate,
            train_seconds=time.perf_counter() - start,
            **extra,
        )
        rows[name], artifacts[name] = row, files
        logging.info("%s %s: %s", network, name, json.dumps(row, default=str))
        results[f"{network}/{name}"] = row
        save()

    start = time.perf_counter()
    dense = train_dense(network, config, data, pipes)
    record("dense", "dense", 0.0, dense, start)
    plan = [("hs_weight", "weight", float(r)) for r in _WEIGHT_RATES.value]
    plan += [("hs_channel", "channel", float(r)) for r in _CHANNEL_RATES.value]
    if network == "lenet_300_100":
        plan += [("hs_block", "block", float(r)) for r in _BLOCK_RATES.value]
    with tempfile.TemporaryDirectory() as directory:
        for index, (method, structure, rate) in enumerate(plan):
            start = time.perf_counter()
            model, extra = train_art(
                network, _config(network), structure, rate, f"{directory}/{index}"
            )
            record(f"{method} {rate:g}", method, rate, model, start, **extra)
    for rate in map(float, _CHANNEL_RATES.value):
        start = time.perf_counter()
        model = train_l1(network, config, data, pipes, dense, rate)
        record(f"l1_filter {rate:g}", "l1_filter", rate, model, start)
    if network == "lenet_300_100":
        for rate in map(float, _BLOCK_RATES.value):
            start = time.perf_counter()
            model = train_tfmot_block(network, config, data, pipes, dense, rate)
            record(f"tfmot_block {rate:g}", "tfmot_block", rate, model, start)
    _latencies(rows, artifacts)
    for name, row in rows.items():
        results[f"{network}/{name}"] = row
    save()


# ------------------------------------------------------------------ report


def _targets(rows):
    """The issue's targets, read off the rows."""
    lines = []
    by_network = {}
    for row in rows:
        by_network.setdefault(row["network"], []).append(row)
    for network, group in by_network.items():
        dense = next((r for r in group if r["method"] == "dense"), None)
        if dense is None or "micro_latency_ratio" not in dense:
            continue
        for row in group:
            if row["method"] != "hs_channel":
                continue
            removed = 1 - row["parameters"] / dense["parameters"]
            checks = [
                ("params removed >= 50%", removed >= 0.5, f"{removed:.1%}"),
                (
                    "flash <= 0.5x",
                    row["flash_bytes"] <= 0.5 * dense["flash_bytes"],
                    f"{row['flash_bytes'] / dense['flash_bytes']:.2f}x",
                ),
                (
                    "arena <= 0.7x",
                    row["arena_bytes"] <= 0.7 * dense["arena_bytes"],
                    f"{row['arena_bytes'] / dense['arena_bytes']:.2f}x",
                ),
                (
                    "host latency <= 0.6x",
                    row["micro_latency_ratio"] <= 0.6,
                    f"{row['micro_latency_ratio']:.2f}x",
                ),
                (
                    "within 1.5 points of dense",
                    row["keras_accuracy"] >= dense["keras_accuracy"] - 0.015,
                    f"{100 * (row['keras_accuracy'] - dense['keras_accuracy']):+.2f}",
                ),
            ]
            text = "; ".join(
                f"{name}: {value} ({'met' if ok else 'MISSED'})"
                for name, ok, value in checks
            )
            lines.append(f"- {network}, hs_channel {row['rate']:g}: {text}")
        for row in group:
            if row["method"] != "hs_channel":
                continue
            rivals = [r for r in group if r["method"] == "l1_filter"]
            if not rivals:
                continue
            rival = min(rivals, key=lambda r: abs(r["parameters"] - row["parameters"]))
            verdict = (
                "ties or beats"
                if row["keras_accuracy"] >= rival["keras_accuracy"] - 0.005
                else "LOSES to"
            )
            lines.append(
                f"- {network}, hs_channel {row['rate']:g} ({row['parameters']:,} "
                f"params, {row['keras_accuracy']:.2%}) {verdict} l1_filter "
                f"{rival['rate']:g} ({rival['parameters']:,} params, "
                f"{rival['keras_accuracy']:.2%}) at the nearest parameter count "
                "(a tie: within 0.5 points)"
            )
        for row in group:
            if row["method"] == "hs_block" and abs(row["rate"] - 0.9) < 1e-9:
                speedup = 1 / row["litert_sparse_ratio"]
                lines.append(
                    f"- {network}, hs_block 0.9 on LiteRT float (sparse "
                    f"encoding, blocks {row['sparse_blocks']}, DENSIFY: "
                    f"{row['densify']}): {speedup:.2f}x faster than dense "
                    f"({'met' if speedup >= 2 else 'MISSED'} the 2x target)"
                )
    return lines


def write_markdown(path, results, command, elapsed):
    diverged = [r for r in results.values() if "diverged" in r]
    rows = [r for r in results.values() if "diverged" not in r]
    lines = [
        "# Structured HyperSparse on the device",
        "",
        f"Run on {datetime.date.today().isoformat()} on this machine's CPU "
        f"(2 shared cores), {elapsed / 60:.0f} minutes. Command:",
        "",
        f"    {command}",
        "",
        "Parameters and MACs are those of the shrunk Keras model (`shrink`, "
        "`model_cost`); flash is the TFLite Micro int8 model of the shrunk "
        "model; latency ratios are to the dense model of the same network, "
        "measured interleaved in one process (TFLite Micro: host CPU, "
        "reference kernels; LiteRT: float32, 1 thread, XNNPACK; `shrunk` = the "
        "shrunk model with dense encoding, `sparse` = the unshrunk model in "
        "TFLite's sparse encoding). Accuracies are on the test subset; the "
        "micro accuracy on its first samples (see the command).",
        "",
        "| network | method | rate | Keras acc | micro int8 acc | parameters "
        "| MACs | sparsity | flash B | arena B | TFLM latency | LiteRT shrunk "
        "| LiteRT sparse | 1x1 zeros | ART epochs |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:

        def ratio(key, row=row):
            return f"{row[key]:.2f}x" if key in row else ""

        zeros = row.get("one_by_one_zeros")
        lines.append(
            f"| {row['network']} | {row['method']} | {row['rate']:g} | "
            f"{row['keras_accuracy']:.2%} | {row['micro_accuracy']:.2%} | "
            f"{row['parameters']:,} | {row['macs']:,} | {row['sparsity']:.1%} | "
            f"{row['flash_bytes']:,} | {row['arena_bytes']:,} | "
            f"{ratio('micro_latency_ratio')} | {ratio('litert_shrunk_ratio')} | "
            f"{ratio('litert_sparse_ratio')} | "
            f"{'' if zeros is None else f'{zeros:.1%}'} | "
            f"{row.get('art_epochs', '')} |"
        )
    for row in diverged:
        lines.append(
            f"| {row['network']} | {row['method']} | {row['rate']:g} | "
            f"diverged: {row['diverged']} |" + " |" * 11
        )
    lines += ["", "## Targets", ""] + (_targets(rows) or ["- (no complete network)"])
    path.write_text("\n".join(lines) + "\n")


def write_plot(path, results):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in results.values() if "diverged" not in r]
    networks = list(dict.fromkeys(r["network"] for r in rows))
    fig, axes = plt.subplots(
        2, len(networks), figsize=(5 * len(networks), 8), squeeze=False
    )
    markers = {
        "dense": "*",
        "hs_weight": "o",
        "hs_channel": "s",
        "hs_block": "D",
        "l1_filter": "^",
        "tfmot_block": "v",
    }
    for column, network in enumerate(networks):
        for method, marker in markers.items():
            group = [
                r for r in rows if r["network"] == network and r["method"] == method
            ]
            if not group:
                continue
            axes[0][column].scatter(
                [r["flash_bytes"] for r in group],
                [100 * r["micro_accuracy"] for r in group],
                marker=marker,
                label=method,
            )
            timed = [r for r in group if "micro_latency_ratio" in r]
            axes[1][column].scatter(
                [r["micro_latency_ratio"] for r in timed],
                [100 * r["keras_accuracy"] for r in timed],
                marker=marker,
                label=method,
            )
        axes[0][column].set_title(network)
        axes[0][column].set_xlabel("TFLite Micro flash bytes (shrunk, int8)")
        axes[0][column].set_ylabel("micro int8 test accuracy (%)")
        axes[1][column].set_xlabel("TFLite Micro host latency / dense")
        axes[1][column].set_ylabel("Keras test accuracy (%)")
        axes[0][column].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv):
    del argv
    out = pathlib.Path(_OUTPUT_DIR.value)
    out.mkdir(parents=True, exist_ok=True)
    json_path = out / f"{_NAME.value}.json"
    command = "PYTHONPATH=. python3 " + shlex.join(sys.argv)
    if _REPLOT.value:
        saved = json.loads(json_path.read_text())
        write_markdown(out / f"{_NAME.value}.md", saved["results"], *saved["run"])
        write_plot(out / f"{_NAME.value}.png", saved["results"])
        return
    for network in _NETWORKS.value:
        if network not in NETWORKS:
            raise app.UsageError(f"--networks: {network!r} is not in {list(NETWORKS)}")
    results = {}
    start = time.perf_counter()
    done = set()
    if _KEEP.value and json_path.exists():
        saved = json.loads(json_path.read_text())
        for key, row in saved["results"].items():
            if row["network"] in _NETWORKS.value:
                results[key] = row
        done = {r["network"] for r in results.values() if "micro_seconds" in r}
        results = {k: r for k, r in results.items() if r["network"] in done}
        command = saved["run"][0] + " && " + command
        start -= saved["run"][1]

    def save():
        elapsed = time.perf_counter() - start
        json_path.write_text(
            json.dumps({"run": [command, elapsed], "results": results}, indent=1)
        )

    for network in _NETWORKS.value:
        if network not in done:
            run_network(network, results, save)
    elapsed = time.perf_counter() - start
    save()
    write_markdown(out / f"{_NAME.value}.md", results, command, elapsed)
    write_plot(out / f"{_NAME.value}.png", results)


if __name__ == "__main__":
    app.run(main)
