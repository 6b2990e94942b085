"""One experiment end to end: data, model, ART, fine-tuning, export, report.

`train_and_evaluate` takes plain arguments and writes a run folder; the absl
script `examples/train.py` is a thin shell around it. `PRESETS` holds the
paper's grid with the reference settings.
"""

import dataclasses
import json
import os
import shutil
import time

import keras
import numpy as np
import tensorflow as tf

from hypersparse_tf import art_schedule
from hypersparse_tf import attachment
from hypersparse_tf import datasets
from hypersparse_tf import groups
from hypersparse_tf import io_utils
from hypersparse_tf import masks as masks_lib
from hypersparse_tf import models
from hypersparse_tf import optimizers
from hypersparse_tf import pipelines
from hypersparse_tf import prunable
from hypersparse_tf import reference
from hypersparse_tf import regularizers
from hypersparse_tf import run_report
from hypersparse_tf import validation
from hypersparse_tf.art import ART

MODELS = (
    "small_cnn",
    "lenet_300_100",
    "mobilenet_style",
    "resnet20",
    "resnet32",
    "resnet56",
    "vgg19_bn",
)
REGULARIZERS = ("hs", "l1", "l2")
STRATEGIES = ("default", "mirrored", "multi_worker", "tpu")
EXPORTS = ("mobile", "micro")
DATASETS = ("digits", "mnist", "fashion_mnist", "cifar10", "cifar100", "tinyimagenet")


@dataclasses.dataclass
class Config:
    """Every setting of one experiment; the defaults are the embedded run.

    The defaults train the small CNN on scikit-learn digits to 95% sparsity in
    a few minutes on 2 CPU cores. Digits has 23 steps per epoch at batch 64
    (CIFAR: 782), so `lambda_init` and `eta` are larger than the paper's, whose
    settings the `PRESETS` carry, together with the reference's coupled weight
    decay and network details (`hypersparse_tf.reference`).
    `batchnorm_momentum`, `batchnorm_epsilon`, `kernel_initializer` and
    `symmetric_padding` apply to the paper's networks (resnet*, vgg19_bn).
    """

    dataset: str = "digits"
    data_path: str = None
    train_size: int = None
    test_size: int = None
    model: str = "small_cnn"
    prune_rate: float = 0.95
    regularizer: str = "hs"
    structure: str = "weight"
    block_size: int = 4
    normalize_groups: bool = True
    warmup_epochs: int = 10
    lambda_init: float = 1e-4
    eta: float = 1.1
    finetune_epochs: int = 20
    buffer_size: int = 1
    recalibrate_batchnorm: int = 512
    epoch_budget: int = None
    max_epochs: int = 300
    batch_size: int = reference.BATCH_SIZE
    learning_rate: float = reference.LEARNING_RATE
    momentum: float = reference.MOMENTUM
    weight_decay: float = reference.WEIGHT_DECAY
    weight_decay_mode: str = "decoupled"
    batchnorm_momentum: float = 0.99
    batchnorm_epsilon: float = 1e-3
    kernel_initializer: str = "he_normal"
    symmetric_padding: bool = False
    augment: bool = None
    seed: int = 0
    strategy: str = "default"
    export: tuple = EXPORTS


_PAPER_MODEL_DEFAULTS = {
    "batchnorm_momentum": 0.99,
    "batchnorm_epsilon": 1e-3,
    "kernel_initializer": "he_normal",
    "symmetric_padding": False,
}
WEIGHT_DECAY_MODES = ("decoupled", "coupled")


def _preset(model, dataset, rate):
    return dict(
        dataset=dataset,
        model=model,
        prune_rate=rate,
        regularizer="hs",
        **reference.art_settings(),
        **reference.training_settings(),
        **{**_PAPER_MODEL_DEFAULTS, **reference.model_settings(model)},
        max_epochs=2000,
        augment=True,
        export=("mobile",),
    )


PRESETS = {
    f"{model}_{dataset}_{label}": _preset(
        "vgg19_bn" if model == "vgg19" else model, dataset, rate
    )
    for model in ("resnet32", "vgg19")
    for dataset in ("cifar10", "cifar100", "tinyimagenet")
    for label, rate in (("90", 0.9), ("98", 0.98), ("995", 0.995))
}


def check_config(config):
    """Raises on a setting outside its choices or range; returns `config`."""
    validation.check_choice(config.model, "model", MODELS)
    validation.check_choice(config.regularizer, "regularizer", REGULARIZERS)
    validation.check_choice(config.strategy, "strategy", STRATEGIES)
    if config.strategy == "multi_worker":
        raise ValueError(
            "Invalid value for argument `strategy`: Keras 3's fit does not run "
            "under MultiWorkerMirroredStrategy (it fails converting a "
            "PerReplica value, keras-team/keras#20585; seen with Keras 3.15 and "
            "TF 2.21), and these experiments train Keras 3 models. Run ART on "
            "several workers with a tf_keras model: examples/multi_worker.py. "
            "Received: strategy='multi_worker'"
        )
    for target in config.export:
        validation.check_choice(target, "export", EXPORTS)
    prunable.check_prune_rate(config.prune_rate)
    budget = art_schedule.check_epoch_budget(
        config.epoch_budget, config.warmup_epochs, config.finetune_epochs
    )
    if budget is not None and budget > config.max_epochs:
        raise ValueError(
            "Invalid value for argument `epoch_budget`. Expected None or an int "
            f"<= max_epochs={config.max_epochs}. Received: "
            f"epoch_budget={config.epoch_budget!r}"
        )
    validation.check_int(config.recalibrate_batchnorm, "recalibrate_batchnorm", 0)
    groups.check_structure(
        config.structure,
        (1, config.block_size) if config.structure == "block" else None,
    )
    validation.check_bool(config.normalize_groups, "normalize_groups")
    if config.structure != "weight" and config.regularizer != "hs":
        raise ValueError(
            validation.invalid(
                "structure",
                "'weight' with the L1/L2 baselines (only HyperSparse has groups)",
                config.structure,
            )
        )
    validation.check_choice(
        config.weight_decay_mode, "weight_decay_mode", WEIGHT_DECAY_MODES
    )
    validation.check_float(
        config.batchnorm_momentum, "batchnorm_momentum", 0, 1, exclusive_maximum=True
    )
    validation.check_float(
        config.batchnorm_epsilon, "batchnorm_epsilon", 0, exclusive_minimum=True
    )
    validation.check_bool(config.symmetric_padding, "symmetric_padding")
    validation.check_string(config.kernel_initializer, "kernel_initializer", False)
    paper_model = config.model.startswith("resnet") or config.model == "vgg19_bn"
    for name, default in _PAPER_MODEL_DEFAULTS.items():
        applies = paper_model and not (
            name == "symmetric_padding" and config.model == "vgg19_bn"
        )
        value = getattr(config, name)
        if value != default and not applies:
            raise ValueError(
                validation.invalid(
                    name,
                    f"its default {default!r}: it applies to resnet20/32/56 and "
                    "vgg19_bn (symmetric_padding to the ResNets only), not to "
                    f"model={config.model!r}",
                    value,
                )
            )
    return config


def make_strategy(name):
    """The `tf.distribute` strategy called `name` (see `STRATEGIES`)."""
    validation.check_choice(name, "strategy", STRATEGIES)
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    if name == "multi_worker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    if name == "tpu":
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver()
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
        return tf.distribute.TPUStrategy(resolver)
    return tf.distribute.get_strategy()


def build_model(name, num_classes, input_shape, **style):
    """A model of `MODELS` for the data's classes and image shape; `style`
    (BatchNorm, initializer, padding) goes to the paper's networks."""
    validation.check_choice(name, "model", MODELS)
    if name.startswith("resnet"):
        return models.resnet(int(name[6:]), num_classes, input_shape, **style)
    if name == "vgg19_bn":
        return models.vgg19_bn(num_classes, input_shape, **style)
    builder = getattr(models, name)
    return builder(num_classes=num_classes, input_shape=input_shape)


def _model_style(config):
    if not (config.model.startswith("resnet") or config.model == "vgg19_bn"):
        return {}
    return {
        name: getattr(config, name)
        for name in _PAPER_MODEL_DEFAULTS
        if name != "symmetric_padding" or config.model.startswith("resnet")
    }


def _load_data(config):
    name, path = config.dataset, config.data_path
    if name == "tinyimagenet":
        if path is None:
            raise ValueError(
                "Invalid value for argument `data_path`. TinyImageNet is read from "
                "a folder with train/<class>/* and test/<class>/* images (its "
                "val images sorted into class folders). Received: data_path=None"
            )
        name = "folder"
    return datasets.load(name, path, config.train_size, config.test_size, config.seed)


def _regularizer(config):
    if config.regularizer == "hs":
        return regularizers.HyperSparse(
            config.prune_rate,
            structure=config.structure,
            block_shape=(1, config.block_size) if config.structure == "block" else None,
            normalize_groups=config.normalize_groups,
        )
    if config.regularizer == "l1":
        return regularizers.AdaptiveL1()
    return regularizers.AdaptiveL2()


class _TestAccuracies(keras.callbacks.Callback):
    """Test accuracy of the dense model when the warm-up ends, and of the
    model after every fine-tuning epoch (the reference reports the best)."""

    def __init__(self, art, test_data):
        super().__init__()
        self.art = art
        self.test_data = test_data
        self.dense = None
        self.finetune = []  # (epoch, test accuracy)

    def _measure(self):
        return float(self.model.evaluate(self.test_data, verbose=0)[1])

    def on_train_begin(self, logs=None):
        if self.dense is None and self.art.warmup_epochs == 0:
            self.dense = self._measure()

    def on_epoch_end(self, epoch, logs=None):
        history = self.art.history
        if not history:
            return
        if self.dense is None and history[-1]["phase"] == "warmup":
            if self.art.phase != "warmup":
                self.dense = self._measure()
        elif history[-1]["phase"] == "finetune":
            self.finetune.append((history[-1]["epoch"], self._measure()))

    def best(self):
        """`(epoch, accuracy)` of the best fine-tuning epoch, or (None, None)."""
        if not self.finetune:
            return None, None
        return max(self.finetune, key=lambda entry: entry[1])


def prepare_output_dir(output_dir, overwrite):
    """Creates `output_dir`, refusing one that exists unless `overwrite`."""
    if os.path.exists(output_dir):
        if not overwrite:
            raise FileExistsError(
                f"Invalid value for argument `output_dir`: {output_dir!r} exists. "
                "Choose another folder or pass overwrite=True (--overwrite)."
            )
        shutil.rmtree(output_dir)
    os.makedirs(output_dir)


def train_and_evaluate(config, output_dir, overwrite=False, verbose=1):
    """Runs one experiment and writes its run folder.

    The folder gets: `model.keras`, `masks.npz`, `history.csv` (per epoch),
    `art_history.json`, `tensorboard/`, `sparsity_report.txt`, the `.tflite`
    files and the C array of the micro model (per `config.export`),
    `deployment_report.md` and `.json`, `accuracy.png`,
    `coefficient_sparsity.png`, `layer_density.png` and `summary.json`.

    Args:
        config: A `Config`.
        output_dir: String. The run folder; must not exist unless `overwrite`.
        overwrite: Bool. Replace an existing `output_dir`. Defaults to `False`.
        verbose: Int. 0 silent, 1 progress. Defaults to `1`.

    Returns:
        The summary dict (also in `summary.json`).
    """
    check_config(config)
    data = _load_data(config)  # before the folder: a missing data set leaves none
    prepare_output_dir(output_dir, overwrite)
    start = time.perf_counter()
    keras.utils.set_random_seed(config.seed)
    strategy = make_strategy(config.strategy)
    replicas = strategy.num_replicas_in_sync
    pipes = pipelines.pipelines(
        data, config.batch_size * replicas, config.augment, config.seed
    )
    with strategy.scope():
        model = build_model(
            config.model, data.num_classes, data.input_shape, **_model_style(config)
        )
        model.compile(
            optimizer=optimizers.sgd(
                config.learning_rate,
                config.momentum,
                config.weight_decay,
                config.weight_decay_mode,
            ),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            metrics=["accuracy"],
        )
        regularizer = _regularizer(config)
        attachment.attach(model, regularizer)
    # As the reference: the pruned copy is scored on the training data as
    # training sees it (shuffled and, where training is, augmented).
    art = ART(
        regularizer,
        pipes["train_eval_augmented"],
        warmup_epochs=config.warmup_epochs,
        lambda_init=config.lambda_init,
        eta=config.eta,
        finetune_epochs=config.finetune_epochs,
        buffer_size=config.buffer_size,
        recalibrate_batchnorm=config.recalibrate_batchnorm,
        epoch_budget=config.epoch_budget,
        prune_rate=None if config.regularizer == "hs" else config.prune_rate,
        verbose=verbose,
    )
    tests = _TestAccuracies(art, pipes["test"])
    model.fit(
        pipes["train"],
        steps_per_epoch=pipes["steps_per_epoch"],
        epochs=config.max_epochs,
        callbacks=[
            art,
            tests,
            keras.callbacks.CSVLogger(os.path.join(output_dir, "history.csv")),
            keras.callbacks.TensorBoard(os.path.join(output_dir, "tensorboard")),
        ],
        verbose=2 if verbose else 0,
    )
    train_seconds = time.perf_counter() - start
    sparse_accuracy = float(model.evaluate(pipes["test"], verbose=0)[1])

    model.save(os.path.join(output_dir, "model.keras"))
    if art.masks is not None:
        np.savez(os.path.join(output_dir, "masks.npz"), **art.masks)
    with open(os.path.join(output_dir, "art_history.json"), "w") as f:
        json.dump(art.history, f, indent=1)
    with open(os.path.join(output_dir, "sparsity_report.txt"), "w") as f:
        f.write(masks_lib.sparsity_report(model) + "\n")
    counts = masks_lib.sparsity_counts(model)
    density = {k: 1 - zeros / size for k, (zeros, size) in counts.items()}
    run_report.write_plots(art.history, density, output_dir)

    summary = {
        "config": dataclasses.asdict(config),
        "phase": art.phase,
        "art_epochs": art.art_epochs_done,
        "termination_epoch": art.termination_epoch,
        "epochs": len(art.history),
        "sparsity": masks_lib.sparsity(model),
        "replicas": replicas,
        "dense_test_accuracy": tests.dense,
        "sparse_test_accuracy": sparse_accuracy,
        "best_finetune_test_accuracy": tests.best()[1],
        "best_finetune_epoch": tests.best()[0],
        "finetune_test_accuracies": [a for _, a in tests.finetune],
        "pruned_accuracy_data": (
            "training set, shuffled and augmented"
            if pipes["augmented"]
            else "training set"
        ),
        "train_seconds": train_seconds,
    }
    if config.export:
        summary.update(
            run_report.export_artifacts(model, pipes, config.export, output_dir)
        )
    summary["wall_seconds"] = time.perf_counter() - start
    with open(os.path.join(output_dir, "summary.json"), "w") as f:
        json.dump(summary, f, indent=1, default=str)
    if verbose:
        io_utils.print_msg(run_report.summary_table(summary))
    return summary


summary_table = run_report.summary_table  # where it was before run_report
