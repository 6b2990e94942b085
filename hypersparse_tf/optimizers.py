"""What ART does to a compiled model's optimizer: its state and learning rate.

Works on the optimizers of Keras 3 and of tf_keras (its current and legacy
ones); a `LossScaleOptimizer` is seen through to the optimizer it wraps.
"""

import sys

import keras
import numpy as np

from hypersparse_tf import _keras_compat


def inner_optimizer(optimizer):
    """The optimizer a `LossScaleOptimizer` wraps, else `optimizer` itself."""
    return getattr(optimizer, "inner_optimizer", optimizer)


def optimizer_variables(optimizer):
    """The variables of a Keras 3 or tf_keras optimizer, as a list."""
    variables = optimizer.variables
    # A method in tf_keras's legacy optimizers, a callable list in its others.
    return list(variables() if callable(variables) else variables)


def learning_rate_is_schedule(optimizer):
    """Whether the optimizer's learning rate is a `LearningRateSchedule`."""
    schedules = [keras.optimizers.schedules.LearningRateSchedule]
    if "tf_keras" in sys.modules:
        schedules.append(
            sys.modules["tf_keras"].optimizers.schedules.LearningRateSchedule
        )
    value = _keras_compat.learning_rate_attribute(inner_optimizer(optimizer))
    return isinstance(value, tuple(schedules))


def learning_rate(optimizer):
    """The optimizer's current learning rate, as a float."""
    return float(np.asarray(inner_optimizer(optimizer).learning_rate))


def set_learning_rate(optimizer, value):
    """Sets a constant learning rate; leaves a `LearningRateSchedule` alone.

    Returns:
        Whether the learning rate was set.
    """
    if learning_rate_is_schedule(optimizer):
        return False
    inner_optimizer(optimizer).learning_rate = float(value)
    return True


def reset_optimizer_state(optimizer):
    """Zeroes every variable of the optimizer (step count, momenta), as a
    freshly built optimizer has them; the learning rate is set by the caller.
    """
    for variable in optimizer_variables(inner_optimizer(optimizer)):
        dtype = keras.backend.standardize_dtype(variable.dtype)
        variable.assign(np.zeros(variable.shape, dtype))


def build_optimizer(model):
    """Creates the optimizer's variables if no step has created them yet."""
    _keras_compat.build_optimizer(model)
