"""The reference's SGD, and what ART does to a compiled model's optimizer.

`CoupledSGD` is PyTorch's `torch.optim.SGD`, which the paper's code trains
with: weight decay ADDED TO THE GRADIENT (coupled, so it passes through the
momentum) and a momentum buffer independent of the learning rate. Keras'
`SGD(weight_decay=...)` decays the weights apart from the gradient
(decoupled: about 10x weaker at momentum 0.9 for the same number) and keeps
`lr * gradient` in its momentum, so a learning-rate drop acts one momentum
time later. Both stay available; the paper presets use `CoupledSGD`.

The functions below work on the optimizers of Keras 3 and of tf_keras (its
current and legacy ones); a `LossScaleOptimizer` is seen through to the
optimizer it wraps.
"""

import sys

import keras
import numpy as np
from keras import ops

from hypersparse_tf import _keras_compat
from hypersparse_tf import validation


@keras.saving.register_keras_serializable(package="hypersparse_tf")
class CoupledSGD(keras.optimizers.Optimizer):
    """SGD with momentum and coupled weight decay, as PyTorch's `SGD`.

    Each step, for a variable `w` with gradient `g`:

        d = g + weight_decay * w
        buf = momentum * buf + d        (buf starts at 0)
        w = w - learning_rate * buf

    (dampening 0, no Nesterov: the reference's settings). One code path of
    `keras.ops`, so it runs on every Keras backend.

    Args:
        learning_rate: Float or `LearningRateSchedule`. Defaults to `0.01`.
        momentum: Float in [0, 1). Defaults to `0.0`.
        weight_decay: Float >= 0. The L2 coefficient added to the gradient.
            Defaults to `0.0`.
        name: String. Defaults to `"coupled_sgd"`.
        **kwargs: The other arguments of `keras.optimizers.Optimizer` (e.g.
            `clipnorm`), except its decoupled `weight_decay`.

    Example:

    >>> optimizer = hypersparse_tf.optimizers.CoupledSGD(
    ...     0.1, momentum=0.9, weight_decay=1e-4)  # the reference's SGD
    >>> model.compile(optimizer=optimizer, loss="sparse_categorical_crossentropy")
    """

    def __init__(
        self,
        learning_rate=0.01,
        momentum=0.0,
        weight_decay=0.0,
        name="coupled_sgd",
        **kwargs,
    ):
        super().__init__(learning_rate=learning_rate, name=name, **kwargs)
        self.momentum = validation.check_float(
            momentum, "momentum", 0, 1, exclusive_maximum=True
        )
        self.coupled_weight_decay = validation.check_float(
            weight_decay, "weight_decay", 0
        )

    def build(self, variables):
        if self.built:
            return
        super().build(variables)
        self.momentums = []
        if self.momentum:
            self.momentums = self.add_optimizer_variables(variables, "momentum")

    def update_step(self, gradient, variable, learning_rate):
        learning_rate = ops.cast(learning_rate, variable.dtype)
        step = ops.cast(gradient, variable.dtype)
        if self.coupled_weight_decay:
            decay = ops.cast(self.coupled_weight_decay, variable.dtype)
            step = ops.add(step, ops.multiply(variable, decay))
        if self.momentum:
            buffer = self.momentums[_keras_compat.variable_index(self, variable)]
            momentum = ops.cast(self.momentum, variable.dtype)
            self.assign(buffer, ops.add(ops.multiply(buffer, momentum), step))
            step = buffer
        self.assign_sub(variable, ops.multiply(step, learning_rate))

    def get_config(self):
        config = super().get_config()
        config.update(
            {"momentum": self.momentum, "weight_decay": self.coupled_weight_decay}
        )
        return config


WEIGHT_DECAY_MODES = ("decoupled", "coupled")


def sgd(learning_rate, momentum, weight_decay, weight_decay_mode="decoupled"):
    """SGD with momentum and weight decay in either form.

    Args:
        learning_rate: Float. The learning rate.
        momentum: Float in [0, 1). The momentum.
        weight_decay: Float >= 0. The weight decay (0: none).
        weight_decay_mode: `"decoupled"` (Keras' `SGD`) or `"coupled"`
            (`CoupledSGD`, PyTorch's, the reference's). Defaults to
            `"decoupled"`.
    """
    validation.check_choice(weight_decay_mode, "weight_decay_mode", WEIGHT_DECAY_MODES)
    if weight_decay_mode == "coupled":
        return CoupledSGD(learning_rate, momentum=momentum, weight_decay=weight_decay)
    return keras.optimizers.SGD(
        learning_rate, momentum=momentum, weight_decay=weight_decay or None
    )


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
    value = inner_optimizer(optimizer).learning_rate
    if hasattr(value, "numpy"):  # also a distributed variable (MWMS)
        value = value.numpy()
    return float(np.asarray(value))


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
