r"""HyperSparse against the sparsification methods a user would pick instead.

For each setting (data set + model), each target sparsity and each seed, every
method starts from the SAME dense model (a shared warm-up of `warmup_epochs`)
and then trains for the same number of further epochs, so that every method
has the same total epoch budget `budget_epochs`:

- `art_hs`, `art_l1`, `art_l2`: ART with HyperSparse, AdaptiveL1 or
  AdaptiveL2 (this library), with `epoch_budget`: ART ends at the latest when
  `finetune_epochs` of the budget remain, and fine-tuning with the mask fixed
  lasts the rest of the budget (learning rate x0.1 at 50% and 75% of it).
- `art_hs_bn`: `art_hs` with `recalibrate_batchnorm=512`: the pruned copy's
  BatchNorm statistics are re-estimated before its accuracy is measured (not
  in the reference code; run only for models with BatchNorm).
- `tfmot_gmp`: tensorflow-model-optimization's `prune_low_magnitude` with a
  `PolynomialDecay` schedule (sparsity 0 -> target, per layer, pruning 4 times
  per epoch) over the same epochs ART may explore in (`budget - warmup -
  finetune`), then `finetune_epochs` at the target with the same learning rate
  drops: the real tfmot, on a tf_keras twin of the model
  (`models.<builder>(flavour="tf_keras")`) holding the warm-up weights.
- `oneshot`: global magnitude pruning of the warm-up model
  (`global_magnitude_masks`), then fine-tuning with the mask fixed
  (`fix_masks`) for the rest of the budget, learning rate x0.1 at 50% and 75%.
- `dense`: the warm-up model trained on for the rest of the budget with the
  same drops; the unpruned reference.

All methods use SGD with the same learning rate, momentum, weight decay,
batch size and data pipeline. ART's pruned accuracy is measured on the
training subset (`--eval_augmented`: shuffled and augmented anew each epoch,
as the reference's training loader). Each row reports the test accuracy
after the last epoch and the best over the fine-tuning epochs (chosen on the
test set, the number the paper reports).

The reference code's details can be switched on one at a time, to measure
what each does (`--eval_augmented`,
`--weight_decay_mode=coupled`, `--reference_batchnorm`,
`--reference_architecture`); `--gpu_paper` has them all.

Each (setting, seed) pair runs in its own process (`--jobs` at a time, the CPU
threads split between them). Results go to `--output_dir`:
`compare_methods.md` (tables and the exact command), `compare_methods.png`
(test accuracy against sparsity per setting) and `compare_methods.json` (every
run).

The default CPU protocol (about 50 minutes on 2 CPU cores):

    PYTHONPATH=. python3 benchmarks/compare_methods.py

The paper's protocol (ResNet-32 on the full CIFAR-10: the JPEG archive from
`--data_path` or `../shared/data`, else tensorflow-datasets' prepared
`cifar10`; warm-up 60, lambda_init 5e-6, eta 1.05, fine-tuning >= 160 in a
budget of 400 epochs, batch 64, crop + flip), for a machine with a GPU:

    PYTHONPATH=. python3 benchmarks/compare_methods.py --gpu_paper
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import concurrent.futures  # noqa: E402
import dataclasses  # noqa: E402
import datetime  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import multiprocessing  # noqa: E402
import pathlib  # noqa: E402
import platform  # noqa: E402
import shlex  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
from absl import app  # noqa: E402
from absl import flags  # noqa: E402

METHODS = ("art_hs", "art_hs_bn", "art_l1", "art_l2", "tfmot_gmp", "oneshot")
LABELS = {
    "art_hs": "ART + HyperSparse",
    "art_hs_bn": "ART + HyperSparse, BN recalibrated",
    "art_l1": "ART + L1",
    "art_l2": "ART + L2",
    "tfmot_gmp": "tfmot gradual magnitude (PolynomialDecay)",
    "oneshot": "one-shot global magnitude + fine-tune",
    "dense": "dense (no pruning)",
}


@dataclasses.dataclass
class Setting:
    """One data set + model and its training protocol."""

    title: str
    dataset: str
    model: str  # a builder in hypersparse_tf.models
    model_kwargs: dict
    train_size: int
    test_size: int
    batch_size: int
    augment: bool
    warmup_epochs: int
    budget_epochs: int
    finetune_epochs: int
    lambda_init: float
    eta: float
    learning_rate: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 1e-4
    buffer_size: int = 1
    cost: float = 1.0  # relative time of one job, to start the longest first
    data_path: str = None
    eval_augmented: bool = False
    weight_decay_mode: str = "decoupled"
    reference_batchnorm: bool = False
    reference_architecture: bool = False


# The CPU protocol. ART's coefficient grows per epoch, and these subsets have
# few steps per epoch (94, 32 and 25 at batch 64; CIFAR-10 has 782) and a
# budget of 7-14 ART epochs, so lambda_init and eta are far larger than the
# paper's. They were set from one calibration run (seed 0, 98%, larger
# subsets): 1e-4 let the CNN and the ResNet reach the budget before ART's rule
# fired, so those two got 3e-4 and 1e-3. L1 and L2 use the same values, as
# the paper's code does (one flag for all three). The warm-up is shared by
# every method and sparsity of a seed, so it is cheap to make it long enough
# for a trained dense start (a first full run with 5 warm-up epochs left the
# ResNet at 16% test accuracy: 125 steps, BatchNorm statistics not settled).
SETTINGS = {
    "fmnist_lenet": Setting(
        title="Fashion-MNIST, LeNet-300-100",
        dataset="fashion_mnist",
        model="lenet_300_100",
        model_kwargs={},
        train_size=6000,
        test_size=10000,
        batch_size=64,
        augment=False,
        warmup_epochs=8,
        budget_epochs=30,
        finetune_epochs=8,
        lambda_init=1e-4,
        eta=1.3,
        cost=6,
    ),
    "fmnist_cnn": Setting(
        title="Fashion-MNIST, small CNN",
        dataset="fashion_mnist",
        model="small_cnn",
        model_kwargs={},
        train_size=2000,
        test_size=5000,
        batch_size=64,
        augment=False,
        warmup_epochs=10,
        budget_epochs=22,
        finetune_epochs=4,
        lambda_init=3e-4,
        eta=1.4,
        cost=7,
    ),
    "cifar10_resnet": Setting(
        title="CIFAR-10 (JPEG archive subset), ResNet-8 (width 16)",
        dataset="cifar10",
        model="resnet",
        model_kwargs={"depth": 8, "width": 16},
        train_size=1600,
        test_size=2000,
        batch_size=64,
        augment=True,
        warmup_epochs=20,
        budget_epochs=31,
        finetune_epochs=4,
        lambda_init=1e-3,
        eta=1.4,
        cost=30,
    ),
}


def _paper_setting():
    from hypersparse_tf import reference

    art = reference.art_settings()
    training = reference.training_settings()
    return Setting(
        title="CIFAR-10, ResNet-32 (paper protocol)",
        dataset="cifar10",
        model="resnet",
        model_kwargs={"depth": 32, "width": 32},
        train_size=None,
        test_size=None,
        augment=True,
        budget_epochs=400,
        eval_augmented=True,
        reference_batchnorm=True,
        reference_architecture=True,
        **{k: art[k] for k in ("warmup_epochs", "finetune_epochs", "buffer_size")},
        lambda_init=art["lambda_init"],
        eta=art["eta"],
        **training,
    )


PAPER_SETTING = _paper_setting()

# The reference's network details, per switch.
_REFERENCE_BATCHNORM = {"batchnorm_momentum": 0.9, "batchnorm_epsilon": 1e-5}
_REFERENCE_ARCHITECTURE = {"kernel_initializer": "reference", "symmetric_padding": True}
_SWITCHES = (
    "eval_augmented",
    "weight_decay_mode",
    "reference_batchnorm",
    "reference_architecture",
)


# The integer settings a flag can override (here and in reference_divergences).
SIZE_OVERRIDES = (
    "train_size",
    "test_size",
    "warmup_epochs",
    "budget_epochs",
    "finetune_epochs",
)


def _define_flags():
    """Defines the absl flags: only when run as a script, so that importing
    this module (tests, worker processes) defines none."""
    global _SETTINGS, _SPARSITIES, _SEEDS, _METHODS, _JOBS, _GPU_PAPER
    global _DATA_PATH, _OVERRIDES, _OUTPUT_DIR, _REPLOT, _NAME, _SWITCH_FLAGS
    _SETTINGS = flags.DEFINE_list(
        "settings", list(SETTINGS), f"Settings to run, of {list(SETTINGS)}."
    )
    _SPARSITIES = flags.DEFINE_list(
        "sparsities", ["0.9", "0.98", "0.99", "0.995"], "Target sparsities."
    )
    _SEEDS = flags.DEFINE_list("seeds", ["0", "1"], "Seeds (initialization, batches).")
    _METHODS = flags.DEFINE_list("methods", list(METHODS), f"Of {list(METHODS)}.")
    _JOBS = flags.DEFINE_integer(
        "jobs", 2, "Processes at a time, one per (setting, seed); CPU threads split."
    )
    _GPU_PAPER = flags.DEFINE_bool(
        "gpu_paper",
        False,
        "Run the paper's ResNet-32 / full CIFAR-10 protocol instead of the CPU "
        "settings (for a machine with a GPU; one job at a time).",
    )
    _DATA_PATH = flags.DEFINE_string(
        "data_path", None, "File or folder of the data set (default: usual places)."
    )
    _OVERRIDES = {
        name: flags.DEFINE_integer(name, None, f"Override every setting's {name}.")
        for name in (*SIZE_OVERRIDES, "batch_size")
    }
    _OVERRIDES.update(
        {
            name: flags.DEFINE_float(name, None, f"Override every setting's {name}.")
            for name in ("lambda_init", "eta")
        }
    )
    _OVERRIDES["buffer_size"] = flags.DEFINE_integer(
        "buffer_size", None, "Override every setting's ART buffer_size."
    )
    _SWITCH_FLAGS = {
        "eval_augmented": flags.DEFINE_bool(
            "eval_augmented",
            None,
            "Score ART's pruned copy on the augmented, shuffled training data.",
        ),
        "weight_decay_mode": flags.DEFINE_enum(
            "weight_decay_mode",
            None,
            ["decoupled", "coupled"],
            "Keras' decoupled weight decay or PyTorch's coupled one.",
        ),
        "reference_batchnorm": flags.DEFINE_bool(
            "reference_batchnorm",
            None,
            "PyTorch's BatchNorm in resnet/vgg19_bn: momentum 0.1 (Keras 0.9), "
            "epsilon 1e-5.",
        ),
        "reference_architecture": flags.DEFINE_bool(
            "reference_architecture",
            None,
            "The reference's initializer and, in resnet, symmetric stride-2 padding.",
        ),
    }
    _OUTPUT_DIR = flags.DEFINE_string(
        "output_dir", "benchmarks/results", "Where the results are written."
    )
    _REPLOT = flags.DEFINE_bool(
        "replot",
        False,
        "Train nothing: redraw the Markdown and the PNG from the JSON of an earlier "
        "run in --output_dir (same --name).",
    )
    _NAME = flags.DEFINE_string(
        "name",
        None,
        "Base name of the result files (default: compare_methods, "
        "or compare_methods_gpu_paper with --gpu_paper).",
    )


# --------------------------------------------------------------------- worker


def _model_style(setting):
    style = {}
    if setting.reference_batchnorm:
        style.update(_REFERENCE_BATCHNORM)
    if setting.reference_architecture:
        style.update(_REFERENCE_ARCHITECTURE)
        if setting.model != "resnet":
            del style["symmetric_padding"]
    return style


def _build(setting, num_classes, input_shape, flavour="keras"):
    from hypersparse_tf import models

    builder = getattr(models, setting.model)
    return builder(
        num_classes=num_classes,
        input_shape=input_shape,
        flavour=flavour,
        **setting.model_kwargs,
        **_model_style(setting),
    )


def _optimizer(module, setting):
    from hypersparse_tf import optimizers

    if module.__name__ == "keras":
        return optimizers.sgd(
            setting.learning_rate,
            setting.momentum,
            setting.weight_decay,
            setting.weight_decay_mode,
        )
    if setting.weight_decay_mode == "coupled":
        raise ValueError("coupled weight decay: Keras 3 models only")
    return module.optimizers.SGD(
        setting.learning_rate,
        momentum=setting.momentum,
        weight_decay=setting.weight_decay or None,
    )


def _compile(module, model, setting):
    model.compile(
        optimizer=_optimizer(module, setting),
        loss=module.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )


def run_job(setting, seed, sparsities, methods, threads, verbose=0):
    """Runs every method at every sparsity for one (setting, seed); rows."""
    import tensorflow as tf

    if threads:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)
    import keras

    import hypersparse_tf
    from hypersparse_tf import datasets
    from hypersparse_tf.art_schedule import finetune_lr_factor

    data = datasets.load(
        setting.dataset,
        path=setting.data_path,
        train_size=setting.train_size,
        test_size=setting.test_size,
        seed=0,  # the same subset for every seed
    )
    pipes = datasets.pipelines(data, setting.batch_size, setting.augment, seed)
    steps = pipes["steps_per_epoch"]
    rest = setting.budget_epochs - setting.warmup_epochs

    def test_accuracy(model):
        return float(model.evaluate(pipes["test"], verbose=0)[1])

    tested = []  # test accuracy after each fine-tuning epoch of the last fit

    def fit(model, epochs, callbacks=(), finetuning=lambda epoch: True):
        """Trains; records the test accuracy after every epoch for which
        `finetuning(epoch)` holds (called after the other callbacks)."""
        tested.clear()

        def on_epoch_end(epoch, logs):
            if finetuning(epoch):
                tested.append(test_accuracy(model))

        check = _lambda_callback(model, on_epoch_end)
        history = model.fit(
            pipes["train"],
            steps_per_epoch=steps,
            epochs=epochs,
            callbacks=[*callbacks, check],
            verbose=verbose,
        )
        return [float(a) for a in history.history["accuracy"]]

    def finetune_schedule(length):
        return keras.callbacks.LearningRateScheduler(
            lambda epoch: setting.learning_rate * finetune_lr_factor(epoch, length)
        )

    def fresh_model(warm_weights):
        model = _build(setting, data.num_classes, data.input_shape)
        model.set_weights(warm_weights)
        _compile(keras, model, setting)
        return model

    rows = []

    def row(method, target, model, start, finetuned=True, **extra):
        kernels = hypersparse_tf.prunable_weights(model)
        final = test_accuracy(model)
        if finetuned:  # the last fine-tuning epoch's is the final accuracy
            extra["best_finetune_test_accuracy"] = max([*tested, final])
            extra["finetune_test_accuracy_history"] = list(tested)
        rows.append(
            dict(
                setting=None,
                seed=seed,
                method=method,
                target=target,
                test_accuracy=final,
                sparsity=hypersparse_tf.sparsity(model),
                prunable_weights=int(sum(np.prod(w.shape) for w in kernels.values())),
                seconds=time.perf_counter() - start,
                **extra,
            )
        )
        if verbose:
            print(rows[-1], flush=True)

    # The shared dense warm-up.
    start = time.perf_counter()
    keras.utils.set_random_seed(seed)
    model = _build(setting, data.num_classes, data.input_shape)
    _compile(keras, model, setting)
    warm_history = fit(model, setting.warmup_epochs, finetuning=lambda e: False)
    warm = model  # trained no further: every method starts from a copy
    warm_weights = warm.get_weights()
    has_batchnorm = _has_batchnorm(model)
    warmup_seconds = time.perf_counter() - start
    row(
        "warmup",
        0.0,
        model,
        start,
        finetuned=False,
        epochs=setting.warmup_epochs,
        train_accuracy_history=warm_history,
    )

    start = time.perf_counter()
    keras.utils.set_random_seed(seed + 1000)
    model = fresh_model(warm_weights)
    history = fit(model, rest, [finetune_schedule(rest)])
    row(
        "dense",
        0.0,
        model,
        start,
        epochs=setting.budget_epochs,
        train_accuracy_history=history,
    )

    for target in sparsities:
        for method in methods:
            keras.utils.set_random_seed(seed + 1000)
            start = time.perf_counter()
            if method == "art_hs_bn" and not has_batchnorm:
                continue  # the same as art_hs
            if method.startswith("art_"):
                model = fresh_model(warm_weights)
                kind = method[4:6]
                if kind == "hs":
                    reg = hypersparse_tf.HyperSparse(target)
                elif kind == "l1":
                    reg = hypersparse_tf.AdaptiveL1()
                else:
                    reg = hypersparse_tf.AdaptiveL2()
                hypersparse_tf.attach(model, reg)
                art = hypersparse_tf.ART(
                    reg,
                    pipes[
                        "train_eval_augmented"
                        if setting.eval_augmented
                        else "train_eval"
                    ],
                    warmup_epochs=0,
                    lambda_init=setting.lambda_init,
                    eta=setting.eta,
                    finetune_epochs=setting.finetune_epochs,
                    epoch_budget=rest,
                    buffer_size=setting.buffer_size,
                    prune_rate=None if kind == "hs" else target,
                    recalibrate_batchnorm=512 if method == "art_hs_bn" else 0,
                    verbose=verbose,
                )
                fit(
                    model,
                    rest,
                    [art],
                    finetuning=lambda e, art=art: (
                        art.history[-1]["phase"] == "finetune"
                    ),
                )
                if art.phase != "done":
                    raise RuntimeError(f"{method} ended in phase {art.phase!r}")
                pruned = [h["pruned_accuracy"] for h in art.history]
                row(
                    method,
                    target,
                    model,
                    start,
                    epochs=setting.warmup_epochs + len(art.history),
                    art_epochs=art.art_epochs_done,
                    stopped_by_budget=art.stopped_by_budget,
                    best_candidate_epoch=art.best_candidate_epoch,
                    best_mean_pruned_accuracy=art.best_mean_pruned_accuracy,
                    final_coefficient=art.lambda_init
                    * art.eta ** (art.art_epochs_done - 1),
                    pruned_accuracy_history=[
                        None if math.isnan(p) else p for p in pruned
                    ],
                    train_accuracy_history=[h["accuracy"] for h in art.history],
                )
            elif method == "oneshot":
                model = fresh_model(warm_weights)
                masks = hypersparse_tf.global_magnitude_masks(model, target)
                hypersparse_tf.fix_masks(model, masks)
                at_pruning = test_accuracy(model)
                history = fit(model, rest, [finetune_schedule(rest)])
                row(
                    method,
                    target,
                    model,
                    start,
                    epochs=setting.budget_epochs,
                    accuracy_right_after_pruning=at_pruning,
                    train_accuracy_history=history,
                )
            elif method == "tfmot_gmp":
                model, extra = _tfmot_gmp(setting, data, warm, target, fit, steps, rest)
                row(method, target, model, start, **extra)
            else:
                raise ValueError(f"Unknown method {method!r}; one of {METHODS}.")
    for r in rows:
        r["warmup_seconds"] = warmup_seconds
    return rows


def _lambda_callback(model, on_epoch_end):
    """A LambdaCallback of the model's own Keras (tfmot's model is tf_keras)."""
    import keras

    from hypersparse_tf.prunable import is_tf_keras

    if is_tf_keras(model):
        import tf_keras

        return tf_keras.callbacks.LambdaCallback(on_epoch_end=on_epoch_end)
    return keras.callbacks.LambdaCallback(on_epoch_end=on_epoch_end)


def _has_batchnorm(model):
    import keras

    return any(
        isinstance(layer, keras.layers.BatchNormalization) for layer in model.layers
    )


def _tfmot_gmp(setting, data, warm, target, fit, steps, rest):
    """tfmot's gradual magnitude pruning on a tf_keras twin of the warm-up
    model `warm`; returns the stripped model."""
    import tensorflow_model_optimization as tfmot
    import tf_keras

    from hypersparse_tf.art_schedule import finetune_lr_factor

    twin = _build(setting, data.num_classes, data.input_shape, flavour="tf_keras")
    for layer in warm.layers:
        if layer.weights:
            twin.get_layer(layer.name).set_weights(layer.get_weights())
    prune_epochs = rest - setting.finetune_epochs
    frequency = max(1, steps // 4)
    end_step = ((prune_epochs * steps - 1) // frequency) * frequency
    schedule = tfmot.sparsity.keras.PolynomialDecay(
        initial_sparsity=0.0,
        final_sparsity=target,
        begin_step=0,
        end_step=end_step,
        frequency=frequency,
    )
    pruned = tfmot.sparsity.keras.prune_low_magnitude(twin, pruning_schedule=schedule)
    _compile(tf_keras, pruned, setting)

    def lr(epoch):
        if epoch < prune_epochs:
            return setting.learning_rate
        length = setting.finetune_epochs
        return setting.learning_rate * finetune_lr_factor(epoch - prune_epochs, length)

    history = fit(
        pruned,
        rest,
        [
            tfmot.sparsity.keras.UpdatePruningStep(),
            tf_keras.callbacks.LearningRateScheduler(lr),
        ],
        finetuning=lambda epoch: epoch >= prune_epochs,
    )
    stripped = tfmot.sparsity.keras.strip_pruning(pruned)
    _compile(tf_keras, stripped, setting)
    return stripped, dict(
        epochs=setting.budget_epochs,
        prune_epochs=prune_epochs,
        pruning_frequency_steps=frequency,
        pruning_end_step=end_step,
        train_accuracy_history=history,
    )


def _job(args):
    name, setting, seed, sparsities, methods, threads = args
    start = time.perf_counter()
    rows = run_job(setting, seed, sparsities, methods, threads)
    for r in rows:
        r["setting"] = name
    return dict(setting=name, seed=seed, rows=rows, seconds=time.perf_counter() - start)


# ---------------------------------------------------------------- reporting


def _mean_spread(values):
    values = [v for v in values if v is not None]
    if not values:
        return None, None, None, None
    return (
        float(np.mean(values)),
        float(np.std(values, ddof=1)) if len(values) > 1 else 0.0,
        float(np.min(values)),
        float(np.max(values)),
    )


def verdict(hs_values, other_values):
    """Win / tie / loss of HyperSparse against another method at one point.

    A win (loss) needs the difference of the means to exceed the larger of
    0.5 percentage points and the sum of the two seed standard deviations,
    and every HyperSparse seed to beat (lose to) the other method's mean.
    """
    hs_mean, hs_std, _, _ = _mean_spread(hs_values)
    mean, std, _, _ = _mean_spread(other_values)
    if hs_mean is None or mean is None:
        return "-", None
    difference = hs_mean - mean
    margin = max(0.005, hs_std + std)
    if difference > margin and all(v > mean for v in hs_values):
        return "win", difference
    if difference < -margin and all(v < mean for v in hs_values):
        return "loss", difference
    return "tie", difference


def _group(rows):
    groups = {}
    for r in rows:
        groups.setdefault((r["setting"], r["method"], r["target"]), []).append(r)
    return groups


def write_markdown(path, results, settings, argv, elapsed, jobs, date=None):
    rows = [r for job in results for r in job["rows"]]
    groups = _group(rows)
    lines = [
        "# HyperSparse against other sparsification methods",
        "",
        f"Written by `benchmarks/compare_methods.py`, run started "
        f"{date or datetime.date.today()}, "
        f"{platform.machine()}, {os.cpu_count()} CPU cores, Python "
        f"{platform.python_version()}, {_versions()}.",
        "",
        "Command (from the repository root):",
        "",
        "    " + " ".join(shlex.quote(a) for a in argv),
        "",
        f"Whole run: {elapsed / 60:.1f} min wall, {jobs} processes at a time.",
        "",
        "Every method starts from the same dense warm-up model of its seed and "
        "has the same total epoch budget. Test accuracy is the mean over seeds "
        "± the seeds' standard deviation [min - max]; sparsity is the measured "
        "fraction of exact zeros among the convolution and dense kernels. ART "
        "epochs: to termination, mean over seeds, with how many seeds the "
        "budget stopped ART. Time: one run of the method after the warm-up, "
        "mean over seeds.",
        "",
    ]
    for name, setting in settings.items():
        seeds = sorted({r["seed"] for r in rows if r["setting"] == name})
        if not seeds:
            continue
        example = next(r for r in rows if r["setting"] == name)
        lines += [
            f"## {setting.title}",
            "",
            f"`{name}`: {setting.dataset} (train {setting.train_size or 'all'}, "
            f"test {setting.test_size or 'all'}), `models.{setting.model}"
            f"({', '.join(f'{k}={v}' for k, v in setting.model_kwargs.items())})`, "
            f"{example['prunable_weights']:,d} prunable weights; batch "
            f"{setting.batch_size}, SGD lr {setting.learning_rate} momentum "
            f"{setting.momentum} weight decay {setting.weight_decay} "
            f"({setting.weight_decay_mode}), augmentation "
            f"{'on' if setting.augment else 'off'}; budget {setting.budget_epochs} "
            f"epochs = warm-up {setting.warmup_epochs} + "
            f"{setting.budget_epochs - setting.warmup_epochs}; ART lambda_init "
            f"{setting.lambda_init}, eta {setting.eta}, buffer b = "
            f"{setting.buffer_size}, fine-tuning >= "
            f"{setting.finetune_epochs}; seeds {seeds}. Reference switches: "
            + ", ".join(f"{switch}={getattr(setting, switch)}" for switch in _SWITCHES)
            + ".",
            "",
        ]
        warm = groups.get((name, "warmup", 0.0), [])
        dense = groups.get((name, "dense", 0.0), [])
        if warm:
            m, s, _, _ = _mean_spread([r["test_accuracy"] for r in warm])
            lines.append(
                f"Warm-up model (shared start): test accuracy {100 * m:.2f} ± "
                f"{100 * s:.2f}%, {np.mean([r['seconds'] for r in warm]):.0f} s."
            )
        if dense:
            m, s, _, _ = _mean_spread([r["test_accuracy"] for r in dense])
            lines.append(
                f"Dense model trained for the whole budget: test accuracy "
                f"{100 * m:.2f} ± {100 * s:.2f}%."
            )
        lines += [
            "",
            "| sparsity | method | test accuracy % (last epoch) | best over "
            "fine-tuning % | measured sparsity % | ART epochs (stopped by "
            "budget) | time per run |",
            "|---|---|---|---|---|---|---|",
        ]
        targets = sorted({r["target"] for r in rows if r["setting"] == name} - {0.0})
        for target in targets:
            for method in METHODS:
                group = groups.get((name, method, target))
                if not group:
                    continue
                m, s, lo, hi = _mean_spread([r["test_accuracy"] for r in group])
                art = "-"
                if method.startswith("art_"):
                    stopped = sum(bool(r["stopped_by_budget"]) for r in group)
                    mean_epochs = np.mean([r["art_epochs"] for r in group])
                    art = f"{mean_epochs:.1f} ({stopped}/{len(group)})"
                sparsity = np.mean([r["sparsity"] for r in group])
                seconds = np.mean([r["seconds"] for r in group])
                best, best_s, _, _ = _mean_spread(
                    [r.get("best_finetune_test_accuracy") for r in group]
                )
                best = "-" if best is None else f"{100 * best:.2f} ± {100 * best_s:.2f}"
                lines.append(
                    f"| {100 * target:g}% | {LABELS[method]} | {100 * m:.2f} ± "
                    f"{100 * s:.2f} [{100 * lo:.2f} - {100 * hi:.2f}] | {best} | "
                    f"{100 * sparsity:.3f} | {art} | {seconds:.0f} s |"
                )
        for reference in ("art_hs", "art_hs_bn"):
            lines += _verdict_table(groups, name, targets, reference)
        lines.append("")
    lines += [
        "A win (loss) needs the difference of the means to exceed both 0.5 "
        "percentage points and the sum of the two methods' seed standard "
        "deviations, with every HyperSparse seed above (below) the other "
        "method's mean; anything else is a tie.",
        "",
        "Per-job wall time: "
        + ", ".join(
            f"{job['setting']} seed {job['seed']} {job['seconds'] / 60:.1f} min"
            for job in results
        )
        + ".",
        "",
    ]
    pathlib.Path(path).write_text("\n".join(lines))


def _verdict_table(groups, name, targets, reference):
    """Markdown lines: `reference` against every other method, per sparsity."""
    if not any(groups.get((name, reference, t)) for t in targets):
        return []
    others = [
        m
        for m in METHODS
        if m != reference and any(groups.get((name, m, t)) for t in targets)
    ]
    if not others:
        return []
    lines = [
        "",
        f"{LABELS[reference]} against each method (difference of mean test "
        "accuracy, percentage points):",
        "",
        "| sparsity | " + " | ".join(LABELS[m] for m in others) + " |",
        "|---" * (len(others) + 1) + "|",
    ]
    for target in targets:
        mine = groups.get((name, reference, target))
        if not mine:
            continue
        cells = []
        for method in others:
            group = groups.get((name, method, target))
            if not group:
                cells.append("-")
                continue
            word, difference = verdict(
                [r["test_accuracy"] for r in mine],
                [r["test_accuracy"] for r in group],
            )
            cells.append(f"{word} ({100 * difference:+.2f})")
        lines.append(f"| {100 * target:g}% | " + " | ".join(cells) + " |")
    return lines


def write_plot(path, results, settings):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for job in results for r in job["rows"]]
    groups = _group(rows)
    names = [n for n in settings if any(r["setting"] == n for r in rows)]
    fig, axes = plt.subplots(
        1, len(names), figsize=(5.5 * len(names), 4.6), squeeze=False
    )
    colors = plt.get_cmap("tab10")
    legend = {}
    for ax, name in zip(axes[0], names, strict=True):
        targets = sorted({r["target"] for r in rows if r["setting"] == name} - {0.0})
        positions = np.arange(len(targets))
        for offset, method in enumerate(METHODS):
            means, lows, highs = [], [], []
            for target in targets:
                group = groups.get((name, method, target), [])
                m, _, lo, hi = _mean_spread([r["test_accuracy"] for r in group])
                means.append(np.nan if m is None else 100 * m)
                lows.append(0 if m is None else 100 * (m - lo))
                highs.append(0 if m is None else 100 * (hi - m))
            if all(np.isnan(means)):
                continue
            legend[method] = ax.errorbar(
                positions + (offset - 2.5) * 0.05,
                means,
                yerr=[lows, highs],
                marker="o",
                capsize=3,
                color=colors(offset),
                label=LABELS[method],
            )
        dense = groups.get((name, "dense", 0.0))
        if dense:
            m = 100 * np.mean([r["test_accuracy"] for r in dense])
            legend["dense"] = ax.axhline(
                m, color="gray", linestyle="--", label="dense (same budget)"
            )
        ax.set_xticks(positions)
        ax.set_xticklabels([f"{100 * t:g}%" for t in targets])
        ax.set_xlabel("sparsity of the kernels")
        ax.set_ylabel("test accuracy (%)")
        ax.set_title(settings[name].title, fontsize=10)
        ax.grid(alpha=0.3)
    order = [m for m in (*METHODS, "dense") if m in legend]
    fig.legend(
        [legend[m] for m in order],
        [LABELS[m] if m != "dense" else "dense (same budget)" for m in order],
        loc="lower center",
        ncol=min(len(order), 4),
        fontsize=8,
    )
    fig.tight_layout(rect=(0, 0.12, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _versions():
    import importlib.metadata as md

    names = ("tensorflow", "keras", "tf_keras", "tensorflow-model-optimization")
    found = []
    for n in names:
        try:
            found.append(f"{n} {md.version(n)}")
        except md.PackageNotFoundError:
            pass
    return ", ".join(found)


# ---------------------------------------------------------------------- main


def _settings():
    if _GPU_PAPER.value:
        settings = {"paper_resnet32_cifar10": dataclasses.replace(PAPER_SETTING)}
    else:
        unknown = [n for n in _SETTINGS.value if n not in SETTINGS]
        if unknown:
            raise app.UsageError(
                f"Unknown --settings {unknown}; choose from {list(SETTINGS)}."
            )
        settings = {n: dataclasses.replace(SETTINGS[n]) for n in _SETTINGS.value}
    for setting in settings.values():
        for name, flag in {**_OVERRIDES, **_SWITCH_FLAGS}.items():
            if flag.value is not None:
                setattr(setting, name, flag.value)
        if _DATA_PATH.value is not None:
            setting.data_path = _DATA_PATH.value
        if setting.budget_epochs < setting.warmup_epochs + setting.finetune_epochs + 1:
            raise app.UsageError(
                f"budget_epochs={setting.budget_epochs} leaves no ART epoch: it "
                f"must be >= warmup_epochs + finetune_epochs + 1 = "
                f"{setting.warmup_epochs + setting.finetune_epochs + 1}."
            )
    return settings


def replot(out, name):
    """Writes `<name>.md` and `<name>.png` again from `<name>.json`."""
    with open(out / f"{name}.json") as f:
        report = json.load(f)
    # Runs written with an option since removed keep replotting.
    fields = {f.name for f in dataclasses.fields(Setting)}
    settings = {
        n: Setting(**{k: v for k, v in s.items() if k in fields})
        for n, s in report["settings"].items()
    }
    jobs = max(1, min(2, len(report["jobs"])))
    write_markdown(
        out / f"{name}.md",
        report["jobs"],
        settings,
        report["command"],
        report["elapsed_seconds"],
        report.get("processes", jobs),
        report.get("date"),
    )
    write_plot(out / f"{name}.png", report["jobs"], settings)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    if _REPLOT.value:
        replot(pathlib.Path(_OUTPUT_DIR.value), _NAME.value or "compare_methods")
        return
    settings = _settings()
    methods = list(_METHODS.value)
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise app.UsageError(f"Unknown --methods {unknown}; choose from {METHODS}.")
    try:
        sparsities = [float(s) for s in _SPARSITIES.value]
        seeds = [int(s) for s in _SEEDS.value]
    except ValueError as error:
        raise app.UsageError(f"--sparsities and --seeds: {error}") from None
    if not all(0 < s < 1 for s in sparsities):
        raise app.UsageError(f"--sparsities must lie in (0, 1): {sparsities}")
    if _JOBS.value < 1:
        raise app.UsageError(f"--jobs must be >= 1: {_JOBS.value}")
    jobs = 1 if _GPU_PAPER.value else min(_JOBS.value, len(settings) * len(seeds))
    threads = 0 if _GPU_PAPER.value else max(1, (os.cpu_count() or 2) // jobs)
    name = _NAME.value or (
        "compare_methods_gpu_paper" if _GPU_PAPER.value else "compare_methods"
    )
    out = pathlib.Path(_OUTPUT_DIR.value)
    out.mkdir(parents=True, exist_ok=True)
    # The longest jobs first, so the last ones to finish are short.
    order = sorted(
        ((n, s, seed) for n, s in settings.items() for seed in seeds),
        key=lambda item: -item[1].cost,
    )
    tasks = [(n, s, seed, sparsities, methods, threads) for n, s, seed in order]
    start = time.perf_counter()
    started = str(datetime.date.today())
    results = []
    if jobs == 1:
        for task in tasks:
            results.append(_job(task))
            print(f"done: {task[0]} seed {task[2]}", flush=True)
    else:
        context = multiprocessing.get_context("spawn")
        with concurrent.futures.ProcessPoolExecutor(
            jobs, mp_context=context, max_tasks_per_child=1
        ) as pool:
            futures = {pool.submit(_job, task): task for task in tasks}
            for future in concurrent.futures.as_completed(futures):
                result = future.result()
                results.append(result)
                print(
                    f"done: {result['setting']} seed {result['seed']} "
                    f"({result['seconds'] / 60:.1f} min)",
                    flush=True,
                )
    elapsed = time.perf_counter() - start
    results.sort(key=lambda job: (list(settings).index(job["setting"]), job["seed"]))
    argv_shown = ["PYTHONPATH=.", "python3", "benchmarks/compare_methods.py"] + [
        a for a in sys.argv[1:]
    ]
    with open(out / f"{name}.json", "w") as f:
        json.dump(
            dict(
                command=argv_shown,
                elapsed_seconds=elapsed,
                processes=jobs,
                date=started,
                settings={n: dataclasses.asdict(s) for n, s in settings.items()},
                jobs=results,
            ),
            f,
            indent=1,
        )
    write_markdown(
        out / f"{name}.md", results, settings, argv_shown, elapsed, jobs, started
    )
    write_plot(out / f"{name}.png", results, settings)
    print((out / f"{name}.md").read_text())


if __name__ == "__main__":
    _define_flags()
    app.run(main)
