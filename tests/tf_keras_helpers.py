"""tf_keras (Keras 2) twins of the Keras 3 test models: same layers, same names.

The weights of a twin are copied from its Keras 3 model layer by layer, so a
test can compare both flavours on exactly the same numbers.
"""

import numpy as np
import pytest

import hypersparse_tf
from tests.art_helpers import art_setup
from tests.art_helpers import compiled
from tests.art_helpers import fit_digits
from tests.art_helpers import mlp
from tests.conftest import TF_KERAS_MISSING
from tests.conftest import mixed_model

# Importing these helpers skips the test module where tf_keras is missing.
tf_keras = pytest.importorskip("tf_keras", reason=TF_KERAS_MISSING)


def tf_keras_mixed_model(seed=0, kernel_regularizer=None):
    """The tf_keras twin of `tests.conftest.mixed_model`, same weights."""
    return mixed_model(seed, kernel_regularizer, module=tf_keras)


def tf_keras_mlp(seed=0):
    """The tf_keras twin of `tests.art_helpers.mlp`, same weights."""
    return mlp(seed, module=tf_keras)


def tf_keras_compiled(model, metrics=("accuracy",)):
    """`tests.art_helpers.compiled`: SGD in the model's own Keras."""
    return compiled(model, metrics)


def tf_keras_art_setup(prune_rate=0.9, regularizer=None, seed=0, **kwargs):
    """`tests.art_helpers.art_setup` on the tf_keras twin of the MLP."""
    model = tf_keras_compiled(tf_keras_mlp(seed))
    return art_setup(prune_rate, regularizer, seed, model=model, **kwargs)


def tf_keras_fit(model, art, epochs=200, callbacks=(), **kwargs):
    """`fit` on the digits training set with `art.for_tf_keras()` first."""
    return fit_digits(model, art.for_tf_keras(), epochs, callbacks, **kwargs)


def masked_weights_are_zero(model, masks):
    """Whether every prunable weight outside its mask is exactly zero."""
    return all(
        np.all(weight.numpy()[~masks[key]] == 0)
        for key, weight in hypersparse_tf.prunable_weights(model).items()
    )
