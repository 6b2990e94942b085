"""The settings of the paper's official code, in one place.

`ART`'s defaults, the experiment presets and the benchmarks' paper modes all
read them from here (GreenAutoML4FAS/HyperSparse: `train.py`, `utils/art.py`).
`LAMBDA_INIT` is the code's default and what its logs show; the README there
says 5e-4, 100x off.
"""

# ART
WARMUP_EPOCHS = 60
LAMBDA_INIT = 5e-6
ETA = 1.05
FINETUNE_EPOCHS = 160
BUFFER_SIZE = 1

# Training
BATCH_SIZE = 64
LEARNING_RATE = 0.1
MOMENTUM = 0.9
WEIGHT_DECAY = 1e-4


def art_settings():
    """The reference's ART arguments, as keyword arguments of `ART`."""
    return {
        "warmup_epochs": WARMUP_EPOCHS,
        "lambda_init": LAMBDA_INIT,
        "eta": ETA,
        "finetune_epochs": FINETUNE_EPOCHS,
        "buffer_size": BUFFER_SIZE,
    }


def training_settings():
    """The reference's batch size and SGD settings."""
    return {
        "batch_size": BATCH_SIZE,
        "learning_rate": LEARNING_RATE,
        "momentum": MOMENTUM,
        "weight_decay": WEIGHT_DECAY,
    }
