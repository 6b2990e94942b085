"""HyperSparse regularization and Adaptive Regularized Training for Keras.

Importing this package never imports tensorflow-model-optimization or tf_keras:
`hypersparse_tf.tfmot_interop` imports them inside its functions only.
"""

from hypersparse_tf import datasets
from hypersparse_tf import experiment
from hypersparse_tf import export
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
