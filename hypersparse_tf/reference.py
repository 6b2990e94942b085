"""The settings of the paper's official code, in one place.

`ART`'s defaults, the experiment presets and the benchmarks' paper modes all
read them from here (GreenAutoML4FAS/HyperSparse: `train.py`, `utils/art.py`,
`models/`). `LAMBDA_INIT` is the code's default and what its logs show; the
README there says 5e-4, 100x off.

Where the reference differs from Keras' defaults:
- its SGD (PyTorch's) adds the weight decay to the gradient: `WEIGHT_DECAY_MODE
  = "coupled"` (`hypersparse_tf.optimizers.CoupledSGD`);
- its BatchNorm is PyTorch's: momentum 0.1, which is Keras' 0.9, and epsilon
  1e-5;
- its initialization is Kaiming normal (fan_out for the ResNet, fan_in for
  VGG), dense layers normal with std 0.01: `KERNEL_INITIALIZER = "reference"`;
- its stride-2 3x3 convolutions pad one pixel on every side;
- it scores the pruned copy on its augmented, shuffled training loader, and
  reports the best test accuracy over the fine-tuning epochs.
"""

# ART
WARMUP_EPOCHS = 60
LAMBDA_INIT = 5e-6
ETA = 1.05
FINETUNE_EPOCHS = 160
BUFFER_SIZE = 1
RECALIBRATE_BATCHNORM = 0  # the pruned copy keeps the dense statistics

# Training
BATCH_SIZE = 64
LEARNING_RATE = 0.1
MOMENTUM = 0.9
WEIGHT_DECAY = 1e-4
WEIGHT_DECAY_MODE = "coupled"

# The paper's networks (hypersparse_tf.models.resnet / vgg19_bn)
BATCHNORM_MOMENTUM = 0.9  # Keras' convention: PyTorch's momentum=0.1
BATCHNORM_EPSILON = 1e-5
KERNEL_INITIALIZER = "reference"
SYMMETRIC_PADDING = True


def art_settings():
    """The reference's ART arguments, as keyword arguments of `ART`."""
    return {
        "warmup_epochs": WARMUP_EPOCHS,
        "lambda_init": LAMBDA_INIT,
        "eta": ETA,
        "finetune_epochs": FINETUNE_EPOCHS,
        "buffer_size": BUFFER_SIZE,
        "recalibrate_batchnorm": RECALIBRATE_BATCHNORM,
    }


def training_settings():
    """The reference's batch size and SGD settings."""
    return {
        "batch_size": BATCH_SIZE,
        "learning_rate": LEARNING_RATE,
        "momentum": MOMENTUM,
        "weight_decay": WEIGHT_DECAY,
        "weight_decay_mode": WEIGHT_DECAY_MODE,
    }


def model_settings(model="resnet"):
    """The reference's network details, as keyword arguments of
    `models.resnet` (or, without the padding, `models.vgg19_bn`)."""
    settings = {
        "batchnorm_momentum": BATCHNORM_MOMENTUM,
        "batchnorm_epsilon": BATCHNORM_EPSILON,
        "kernel_initializer": KERNEL_INITIALIZER,
    }
    if model.startswith("resnet"):
        settings["symmetric_padding"] = SYMMETRIC_PADDING
    return settings
