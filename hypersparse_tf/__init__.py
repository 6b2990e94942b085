"""HyperSparse regularization and Adaptive Regularized Training for Keras.

Importing this package never imports tensorflow-model-optimization or tf_keras:
`hypersparse_tf.tfmot_interop` imports them inside its functions only. Under
the JAX or PyTorch backend it does not import TensorFlow either: `datasets`,
`experiment` and `export` are imported when first used.
"""

import importlib

from hypersparse_tf import models
from hypersparse_tf.art import ART
from hypersparse_tf.art_schedule import ARTSchedule
from hypersparse_tf.attachment import attach
from hypersparse_tf.attachment import attached_weights
from hypersparse_tf.costs import model_cost
from hypersparse_tf.evaluation import pruned_accuracy
from hypersparse_tf.evaluation import recalibrate_batchnorm
from hypersparse_tf.mask_constraints import fix_masks
from hypersparse_tf.mask_constraints import release_masks
from hypersparse_tf.masks import apply_masks
from hypersparse_tf.masks import global_magnitude_masks
from hypersparse_tf.masks import sparsity
from hypersparse_tf.masks import sparsity_report
from hypersparse_tf.prunable import is_prunable_kernel
from hypersparse_tf.prunable import prunable_weights
from hypersparse_tf.regularizers import AdaptiveL1
from hypersparse_tf.regularizers import AdaptiveL2
from hypersparse_tf.regularizers import HyperSparse
from hypersparse_tf.regularizers import register_with_tf_keras
from hypersparse_tf.shrink import shrink
from hypersparse_tf.tfmot_interop import to_tfmot

__version__ = "0.1.0"

# Modules that need TensorFlow (tf.data pipelines, tensorflow-datasets, TFLite
# conversion), imported on first use: under the JAX or PyTorch backend,
# `import hypersparse_tf` does not import TensorFlow.
_LAZY_MODULES = ("datasets", "experiment", "export")


def __getattr__(name):
    if name in _LAZY_MODULES:
        try:
            return importlib.import_module(f"hypersparse_tf.{name}")
        except ImportError as error:
            if error.name is None or not error.name.startswith("tensorflow"):
                raise
            raise ImportError(
                f"hypersparse_tf.{name} needs TensorFlow (tf.data, "
                "tensorflow-datasets, TFLite conversion), which is not "
                "installed: pip install tensorflow. The regularizers, masks, "
                "ART and the models work without it on JAX and PyTorch."
            ) from error
    raise AttributeError(f"module 'hypersparse_tf' has no attribute {name!r}")


__all__ = [
    "ART",
    "ARTSchedule",
    "AdaptiveL1",
    "AdaptiveL2",
    "HyperSparse",
    "apply_masks",
    "attach",
    "attached_weights",
    "datasets",
    "experiment",
    "export",
    "fix_masks",
    "global_magnitude_masks",
    "is_prunable_kernel",
    "model_cost",
    "models",
    "prunable_weights",
    "pruned_accuracy",
    "recalibrate_batchnorm",
    "register_with_tf_keras",
    "release_masks",
    "shrink",
    "sparsity",
    "sparsity_report",
    "to_tfmot",
]
