r"""Trains a sparse model with HyperSparse + ART and exports it.

With no flags: scikit-learn digits, the small CNN, 95% sparsity, ART, fine-tuning,
export to mobile and micro (after `shrink`), a few minutes on 2 CPU cores:

    python examples/train.py

The paper's settings (ResNet-32 / VGG-19 x CIFAR-10 / CIFAR-100 / TinyImageNet
x 90 / 98 / 99.5% sparsity):

    python examples/train.py --preset=resnet32_cifar10_98 --output_dir=runs/r32

Flags given next to a preset override it.
"""

import dataclasses
import os
import time

from absl import app
from absl import flags
from absl import logging

from hypersparse_tf import experiment

_DEFAULT = experiment.Config()
FLAGS = flags.FLAGS
flags.DEFINE_enum(
    "preset", None, sorted(experiment.PRESETS), "The paper's settings for one run."
)
flags.DEFINE_string(
    "output_dir",
    None,
    "Run folder to write; must not exist. Default: runs/<dataset>_<model>_<rate>_"
    "<date-time>.",
)
flags.DEFINE_bool("overwrite", False, "Replace an existing output folder.")
flags.DEFINE_string(
    "dataset", _DEFAULT.dataset, f"One of {experiment.DATASETS}, or a tfds name."
)
flags.DEFINE_string("data_path", None, "File or folder to read the data from.")
flags.DEFINE_integer("train_size", None, "Use a class-balanced training subset.")
flags.DEFINE_integer("test_size", None, "Use a class-balanced test subset.")
flags.DEFINE_enum("model", _DEFAULT.model, experiment.MODELS, "The network.")
flags.DEFINE_float("prune_rate", _DEFAULT.prune_rate, "Fraction of weights to remove.")
flags.DEFINE_enum(
    "regularizer", _DEFAULT.regularizer, experiment.REGULARIZERS, "HyperSparse, L1, L2."
)
flags.DEFINE_enum(
    "structure",
    _DEFAULT.structure,
    ["weight", "channel", "block"],
    "What HyperSparse removes: single weights, whole channels/units (shrink then "
    "deletes them), or 1xB blocks of Dense kernels (LiteRT's sparse kernels).",
)
flags.DEFINE_integer("block_size", _DEFAULT.block_size, "B of --structure=block.")
flags.DEFINE_bool(
    "normalize_groups", _DEFAULT.normalize_groups, "Group magnitude = RMS, not L2."
)
flags.DEFINE_integer("warmup_epochs", _DEFAULT.warmup_epochs, "Dense epochs first.")
flags.DEFINE_float("lambda_init", _DEFAULT.lambda_init, "First ART coefficient.")
flags.DEFINE_float("eta", _DEFAULT.eta, "Growth of the coefficient per ART epoch.")
flags.DEFINE_integer("finetune_epochs", _DEFAULT.finetune_epochs, "Masked epochs.")
flags.DEFINE_integer("buffer_size", _DEFAULT.buffer_size, "ART buffer b (2b+1).")
flags.DEFINE_integer(
    "recalibrate_batchnorm",
    _DEFAULT.recalibrate_batchnorm,
    "Re-estimate the pruned copy's BatchNorm statistics on this many samples "
    "before measuring its accuracy (0: no, as the reference code; the presets).",
)
flags.DEFINE_integer(
    "epoch_budget",
    _DEFAULT.epoch_budget,
    "Epochs in all: ART ends when finetune_epochs remain, fine-tuning fills "
    "the rest (default: no budget).",
)
flags.DEFINE_integer("max_epochs", _DEFAULT.max_epochs, "Upper bound on epochs.")
flags.DEFINE_integer("batch_size", _DEFAULT.batch_size, "Batch size per replica.")
flags.DEFINE_float("learning_rate", _DEFAULT.learning_rate, "SGD learning rate.")
flags.DEFINE_float("momentum", _DEFAULT.momentum, "SGD momentum.")
flags.DEFINE_float("weight_decay", _DEFAULT.weight_decay, "SGD weight decay.")
flags.DEFINE_enum(
    "weight_decay_mode",
    _DEFAULT.weight_decay_mode,
    experiment.WEIGHT_DECAY_MODES,
    "decoupled: Keras' SGD; coupled: added to the gradient, PyTorch's (the "
    "reference's, ~10x stronger at momentum 0.9).",
)
flags.DEFINE_float(
    "batchnorm_momentum",
    _DEFAULT.batchnorm_momentum,
    "BatchNorm momentum of resnet*/vgg19_bn (the reference: 0.9 = PyTorch's 0.1).",
)
flags.DEFINE_float(
    "batchnorm_epsilon",
    _DEFAULT.batchnorm_epsilon,
    "BatchNorm epsilon of resnet*/vgg19_bn (the reference: 1e-5).",
)
flags.DEFINE_string(
    "kernel_initializer",
    _DEFAULT.kernel_initializer,
    "Kernel initializer of resnet*/vgg19_bn: a Keras initializer, or "
    "'reference' (Kaiming normal, dense std 0.01).",
)
flags.DEFINE_bool(
    "symmetric_padding",
    _DEFAULT.symmetric_padding,
    "Pad stride-2 3x3 convolutions of resnet* on every side, as PyTorch.",
)
flags.DEFINE_bool("augment", None, "Crop + flip; default: on for colour images.")
flags.DEFINE_integer("seed", _DEFAULT.seed, "Random seed.")
flags.DEFINE_enum(
    "strategy", _DEFAULT.strategy, experiment.STRATEGIES, "tf.distribute strategy."
)
flags.DEFINE_list("export", list(_DEFAULT.export), f"Subset of {experiment.EXPORTS}.")
flags.register_validator(
    "export",
    lambda targets: set(targets) <= set(experiment.EXPORTS),
    message=f"--export takes a comma-separated subset of {list(experiment.EXPORTS)}.",
)

_FIELDS = [f.name for f in dataclasses.fields(experiment.Config)]


def config_from_flags():
    """The Config of the preset (if any), overridden by flags given. absl
    refuses choices outside the enums when it parses the flags."""
    settings = {}
    if FLAGS.preset is not None:
        settings.update(experiment.PRESETS[FLAGS.preset])
    for name in _FIELDS:
        if FLAGS[name].present or name not in settings:
            settings[name] = FLAGS[name].value
    settings["export"] = tuple(settings["export"])
    return experiment.check_config(experiment.Config(**settings))


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    if not FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)  # the TFLite converter is chatty
    config = config_from_flags()
    output_dir = FLAGS.output_dir
    if output_dir is None:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        rate = f"{config.prune_rate * 100:g}".replace(".", "")
        name = f"{config.dataset}_{config.model}_{rate}_{stamp}"
        output_dir = os.path.join("runs", name)
    try:
        experiment.train_and_evaluate(config, output_dir, FLAGS.overwrite)
    except FileExistsError as error:
        raise app.UsageError(str(error)) from None
    print(f"Run folder: {output_dir}")


if __name__ == "__main__":
    app.run(main)
