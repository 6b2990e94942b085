"""HyperSparse and the adaptive L1/L2 baselines as Keras regularizers.

HyperSparse (Glandorf et al., ICCV 2023 workshop) is a loss over ONE vector `w`
made of every prunable kernel of a network. With `t` the `floor(kappa * N)`-th
smallest magnitude, `s = 0.6585 / t`, `A = sum|w|` and `T = sum tanh(s|w|)`, its
gradient is `sign(w) * s * (A / T) * sech^2(s|w|)`: small weights are pushed to
zero, weights well above the threshold are left alone.

A Keras regularizer sees one tensor at a time, so each regularizer here holds the
global statistics in non-trainable variables that `update_statistics()` refreshes
from all of its kernels, in-graph. The per-tensor loss
`coefficient * stop_gradient(A / T) * sum tanh(s|x|)` then gives exactly the
reference gradient; summed over all kernels its value is `coefficient * A`.
"""

import uuid

import keras
import numpy as np

from hypersparse_tf import _keras_compat
from hypersparse_tf import backend_state
from hypersparse_tf import groups
from hypersparse_tf import prunable
from hypersparse_tf import validation
from hypersparse_tf.quantile import kth_smallest_magnitude

# artanh(1 / sqrt(3)), rounded as in the reference code: puts the inflection point
# of sech^2(s|w|) at the threshold t.
INFLECTION = 0.6585
NON_FINITE_MESSAGE = (
    "HyperSparse statistics: the regularized kernels hold NaN or inf values "
    "(did training diverge? lower the learning rate or lambda_init)"
)


class NonFiniteWeightsError(FloatingPointError):
    """Raised by `update_statistics()` on kernels that hold NaN or inf."""


def _state_variable(value, name):
    """A float32 non-trainable variable of the regularizer's state: a
    `tf.Variable` under TensorFlow (tf_keras models and `tf.distribute` take
    it), a `keras.Variable` on the other backends (`attach` adds it to the
    model's state, so that a compiled step reads its current value)."""
    if backend_state.is_tensorflow():
        import tensorflow as tf

        return tf.Variable(value, trainable=False, dtype=tf.float32, name=name)
    return keras.Variable(
        np.asarray(value, np.float32), trainable=False, dtype="float32", name=name
    )


def _value(variable):
    """A state variable's value as a tensor of the backend."""
    return variable if backend_state.is_tensorflow() else variable.value


class AdaptiveRegularizer(keras.regularizers.Regularizer):
    """Base class of the regularizers an `ART` schedule can drive.

    Holds the coefficient (lambda) in a non-trainable variable, so a schedule
    can change it during `fit` without retracing the train step, and knows the
    kernels it is attached to.

    Args:
        coefficient: Float >= 0. Initial value of the coefficient. Defaults to
            `0.0`: the regularizer does nothing until a schedule raises it.
    """

    def __init__(self, coefficient=0.0):
        coefficient = validation.check_float(coefficient, "coefficient", 0)
        self._coefficient = _state_variable(coefficient, "coefficient")
        self._kernels = []
        self.uid = uuid.uuid4().hex

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        uid = config.pop("uid", None)
        objects = _keras_compat.objects_of_current_load()
        key = f"hypersparse_tf/{uid}"
        if uid is not None and objects is not None and key in objects:
            return objects[key]
        instance = cls(**config)
        if uid is not None:
            instance.uid = uid
            if objects is not None:
                objects[key] = instance
        return instance

    @property
    def coefficient(self):
        """Non-trainable float32 variable: the coefficient lambda."""
        return self._coefficient

    @property
    def kernels(self):
        """The variables this regularizer is attached to, as set by `attach`."""
        return tuple(self._kernels)

    def bind_kernels(self, kernels, grouping=None):
        """Sets the variables this regularizer is attached to (`attach` and
        `ART` call it); its global statistics are computed over them.
        `grouping` is for structured regularizers only."""
        self._kernels = list(kernels)

    def update_statistics(self):
        """Refreshes the global statistics; a no-op for local penalties."""

    def state_variables(self):
        """The regularizer's own variables (coefficient, statistics)."""
        return [self._coefficient]

    def get_config(self):
        coefficient = keras.ops.convert_to_numpy(self._coefficient)
        return {"coefficient": float(coefficient), "uid": self.uid}

    def __repr__(self):
        config = self.get_config()
        del config["uid"]
        config = ", ".join(f"{k}={v!r}" for k, v in config.items())
        return f"{type(self).__name__}({config})"


@keras.saving.register_keras_serializable(package="hypersparse_tf")
class HyperSparse(AdaptiveRegularizer):
    """The HyperSparse regularizer, global over every kernel it is attached to.

    Its loss on one kernel `x` is
    `coefficient * stop_gradient(ratio) * sum(tanh(scale * |x|))`, where
    `scale = 0.6585 / t` and `ratio = A / T` are computed over ALL attached
    kernels by `update_statistics()` (`t` is the exact `floor(prune_rate * N)`-th
    smallest magnitude, 0-based). Call `update_statistics()` before every
    training step, as the reference does; the `ART` callback does this.

    When more than `prune_rate` of the weights are exactly zero, `t = 0`: the
    target sparsity is already met without loss, so `scale` and `ratio` are set
    to 0 and the loss and its gradient are exactly zero (no inf, no NaN) until a
    weight moves away from zero again.

    Attach one instance to all kernels of a model with `attach(model, reg)`, or
    pass the SAME instance as `kernel_regularizer` of every layer.

    With `structure="channel"` or `"block"` the same loss acts on the vector
    of GROUP magnitudes (channels or units, or 1xB blocks of Dense kernels;
    see `hypersparse_tf.groups`): `t` is the exact `floor(prune_rate * G)`-th
    smallest of the `G` group magnitudes, and the gradient reaches each weight
    through its group's norm. Such a regularizer is attached with `attach`,
    which finds the groups in the model (merging the channels that meet in an
    `Add`).

    Args:
        prune_rate: Float in (0, 1). Fraction `kappa` of the weights (or
            groups) to remove. Defaults to `0.9`.
        coefficient: Float >= 0. Initial coefficient lambda. Defaults to `0.0`.
        structure: `"weight"`, `"channel"` or `"block"`. Defaults to
            `"weight"` (the paper's).
        block_shape: `(1, B)` for `structure="block"`: blocks of B inputs of
            one Dense unit. Defaults to `None`: `(1, 4)` for blocks.
        normalize_groups: Bool. Divide a group's L2 norm by the square root of
            its size (RMS), so that groups of different sizes compete on one
            scale. Defaults to `True`.

    Example:

    >>> reg = hypersparse_tf.HyperSparse(prune_rate=0.9)
    >>> hypersparse_tf.attach(model, reg)
    >>> reg.coefficient.assign(5e-6)
    >>> reg.update_statistics()
    >>> loss = sum(model.losses)  # gradient: the HyperSparse gradient
    """

    def __init__(
        self,
        prune_rate=0.9,
        coefficient=0.0,
        structure="weight",
        block_shape=None,
        normalize_groups=True,
    ):
        super().__init__(coefficient=coefficient)
        self.prune_rate = prune_rate = prunable.check_prune_rate(prune_rate)
        self.structure, self.block_shape = groups.check_structure(
            structure, block_shape
        )
        self.normalize_groups = validation.check_bool(
            normalize_groups, "normalize_groups"
        )
        self._grouping = None
        self._group_sums_of_squares = None
        self._kernel_index = {}
        self._threshold = _state_variable(0.0, "threshold")
        self._scale = _state_variable(0.0, "scale")
        self._ratio = _state_variable(0.0, "ratio")
        self._update_function = None

    @property
    def threshold(self):
        """Non-trainable variable: the magnitude threshold `t`."""
        return self._threshold

    @property
    def scale(self):
        """Non-trainable variable: `s = 0.6585 / t` (0 when `t = 0`)."""
        return self._scale

    @property
    def ratio(self):
        """Non-trainable variable: `A / T` (0 when `t = 0`)."""
        return self._ratio

    @property
    def grouping(self):
        """The `groups.Grouping` of a structured regularizer, else None."""
        return self._grouping

    def bind_kernels(self, kernels, grouping=None):
        """Sets the kernels (and, when structured, their `groups.Grouping`:
        `attach` builds it from the model)."""
        kernels = list(kernels)
        if self.structure != "weight":
            if grouping is None or len(grouping.kernels) != len(kernels):
                raise ValueError(
                    f"A HyperSparse regularizer with structure={self.structure!r} "
                    "needs the groups of its kernels: attach it with "
                    "`hypersparse_tf.attach(model, regularizer)`."
                )
            self._grouping = grouping
            self._kernel_index = {id(k): i for i, k in enumerate(kernels)}
            self._group_sums_of_squares = _state_variable(
                np.zeros([grouping.num_groups], np.float32), "group_sums_of_squares"
            )
        super().bind_kernels(kernels)
        self._update_function = None

    def __call__(self, x):
        if self.structure != "weight":
            index = self._kernel_index.get(id(x))
            if index is None:  # JAX's step passes the variable's traced value
                index = _keras_compat.index_of_current_value(self._kernels, x)
            if index is None:
                raise ValueError(
                    "A structured HyperSparse regularizer regularizes the kernels "
                    "it was attached to (it is called with the kernel variable); "
                    f"received {type(x).__name__} {getattr(x, 'name', '')!r}."
                )
            return groups.structured_loss(
                self._grouping.kernels[index],
                x,
                _value(self._group_sums_of_squares),
                self._grouping,
                _value(self._coefficient) * _value(self._ratio),
                _value(self._scale),
            )
        ops = keras.ops
        x = ops.convert_to_tensor(x)
        weight = _value(self._coefficient) * _value(self._ratio)
        weight = ops.stop_gradient(ops.cast(weight, x.dtype))
        scale = ops.stop_gradient(ops.cast(_value(self._scale), x.dtype))
        return weight * ops.sum(ops.tanh(scale * ops.abs(x)))

    def state_variables(self):
        state = [self._coefficient, self._threshold, self._scale, self._ratio]
        if self._group_sums_of_squares is not None:
            state.append(self._group_sums_of_squares)
        return state

    def compute_statistics(self, kernels):
        """Returns `(t, s, A / T)` over `kernels`, as float32 scalar tensors.

        Args:
            kernels: List of tensors or variables.
        """
        return self._statistics_of(self._magnitudes(kernels)[1])

    def _magnitudes(self, kernels):
        """`(group sums of squares or None, magnitudes)`, float32: the vector
        the statistics are taken over (one entry per weight, or per group)."""
        ops = keras.ops
        kernels = [ops.cast(ops.convert_to_tensor(k), "float32") for k in kernels]
        if self.structure != "weight":
            sums = self._grouping.group_sums_of_squares(kernels, ops)
            return sums, self._grouping.magnitudes(sums, ops)
        # One vector: a few large ops run faster than many small ones per kernel.
        return None, ops.concatenate(
            [ops.abs(ops.reshape(k, (-1,))) for k in kernels], 0
        )

    def _statistics_of(self, magnitudes):
        """`(t, s, A / T)` of a vector of magnitudes."""
        # NaN and inf have bit patterns above every finite magnitude: the
        # threshold would look fine while the statistics are garbage.
        ops = keras.ops
        if backend_state.is_tensorflow():
            import tensorflow as tf

            magnitudes = tf.debugging.assert_all_finite(magnitudes, NON_FINITE_MESSAGE)
        threshold = kth_smallest_magnitude(
            [magnitudes],
            prunable.num_pruned(self.prune_rate, int(magnitudes.shape[0])),
        )
        scale = ops.divide_no_nan(ops.cast(INFLECTION, "float32"), threshold)
        total = ops.sum(magnitudes)
        soft_count = ops.sum(ops.tanh(scale * magnitudes))
        return threshold, scale, ops.divide_no_nan(total, soft_count)

    def _assign(self, threshold, scale, ratio, sums):
        self._threshold.assign(threshold)
        self._scale.assign(scale)
        self._ratio.assign(ratio)
        if sums is not None:
            self._group_sums_of_squares.assign(sums)

    def _assign_statistics(self):
        sums, magnitudes = self._magnitudes(self._kernels)
        self._assign(*self._statistics_of(magnitudes), sums)

    def _statistics_of_values(self, values):
        """The statistics (and group sums) of kernel values, a pure function
        for `jax.jit`: `(finite, threshold, scale, ratio, sums or None)`."""
        sums, magnitudes = self._magnitudes(values)
        finite = keras.ops.all(keras.ops.isfinite(magnitudes))
        return (finite, *self._statistics_of(magnitudes), sums)

    def _update_other_backend(self):
        """`update_statistics` on JAX (jitted once) and PyTorch (eager)."""
        if self._update_function is None:
            function = self._statistics_of_values
            if keras.backend.backend() == "jax":
                import jax

                function = jax.jit(function)
            elif keras.backend.backend() == "torch":
                import torch

                # Statistics: no autograd graph to record.
                function = torch.no_grad()(function)
            self._update_function = function
        values = [keras.ops.convert_to_tensor(k.value) for k in self._kernels]
        finite, threshold, scale, ratio, sums = self._update_function(values)
        if not bool(keras.ops.convert_to_numpy(finite)):
            raise NonFiniteWeightsError(
                f"{NON_FINITE_MESSAGE}. The statistics were left as they were."
            )
        self._assign(threshold, scale, ratio, sums)

    def update_statistics(self):
        """Recomputes `threshold`, `scale` and `ratio` over all attached kernels.

        Exact (the true quantile, by radix selection) and in-graph: compiled
        once into a `tf.function`, it costs ~10 ms for 1.9M weights on 2 CPU
        cores.

        Raises:
            ValueError: if the regularizer is attached to no kernel.
            NonFiniteWeightsError: if a kernel holds NaN or inf (inside a
                `tf.function`: `tf.errors.InvalidArgumentError` with the same
                message).
        """
        if not self._kernels:
            raise ValueError(
                "This HyperSparse regularizer is attached to no kernel. Call "
                "`hypersparse_tf.attach(model, regularizer)` on a built model "
                "first."
            )
        if not backend_state.is_tensorflow():
            self._update_other_backend()
            return
        import tensorflow as tf

        if tf.inside_function():
            self._assign_statistics()
            return
        if self._update_function is None:
            # No AutoGraph: plain TF ops only, and it must not re-read source.
            self._update_function = tf.function(
                self._assign_statistics, autograph=False
            )
        try:
            self._update_function()
        except tf.errors.InvalidArgumentError as error:
            if NON_FINITE_MESSAGE not in str(error):
                raise
            raise NonFiniteWeightsError(
                f"{NON_FINITE_MESSAGE}. The statistics were left as they were."
            ) from None

    def structured_masks(self, values, prune_rate=None, min_groups=1):
        """Masks removing whole groups of the bound kernels by magnitude (see
        `groups.structured_masks`); `values` in the kernels' order."""
        rate = self.prune_rate if prune_rate is None else prune_rate
        return groups.structured_masks(values, self._grouping, rate, min_groups)

    def get_config(self):
        config = {"prune_rate": self.prune_rate, **super().get_config()}
        if self.structure != "weight":  # configs of per-weight ones unchanged
            config.update(
                structure=self.structure,
                block_shape=None
                if self.block_shape is None
                else list(self.block_shape),
                normalize_groups=self.normalize_groups,
            )
        return config


@keras.saving.register_keras_serializable(package="hypersparse_tf")
class AdaptiveL1(AdaptiveRegularizer):
    """The paper's L1 baseline: `coefficient * sum(|x|)`, driven by `ART`.

    Args:
        coefficient: Float >= 0. Initial coefficient lambda. Defaults to `0.0`.

    Example:

    >>> reg = hypersparse_tf.AdaptiveL1()
    >>> hypersparse_tf.attach(model, reg)
    """

    def __call__(self, x):
        ops = keras.ops
        x = ops.convert_to_tensor(x)
        weight = ops.stop_gradient(ops.cast(_value(self._coefficient), x.dtype))
        return weight * ops.sum(ops.abs(x))


@keras.saving.register_keras_serializable(package="hypersparse_tf")
class AdaptiveL2(AdaptiveRegularizer):
    """The paper's L2 baseline: `coefficient * sum(x^2)`, driven by `ART`.

    Args:
        coefficient: Float >= 0. Initial coefficient lambda. Defaults to `0.0`.

    Example:

    >>> reg = hypersparse_tf.AdaptiveL2()
    >>> hypersparse_tf.attach(model, reg)
    """

    def __call__(self, x):
        ops = keras.ops
        x = ops.convert_to_tensor(x)
        weight = ops.stop_gradient(ops.cast(_value(self._coefficient), x.dtype))
        return weight * ops.sum(ops.square(x))


def register_with_tf_keras():
    """Registers the regularizers and mask constraints with tf_keras.

    Keras 3 knows `HyperSparse`, `AdaptiveL1`, `AdaptiveL2` and the mask
    constraints of `fix_masks` and `ART` as soon as
    `hypersparse_tf` is imported. tf_keras has its own registry, and this
    package never imports tf_keras by itself: `attach` on a tf_keras model,
    `ART.for_tf_keras` and `to_tfmot` call this function. Call it yourself
    before `tf_keras.models.load_model` of a `.keras` file in a process that
    has done none of these. Calling it again does nothing.

    Returns:
        Dict `{registered name: class}`, usable as `custom_objects`.

    Example:

    >>> hypersparse_tf.register_with_tf_keras()
    >>> model = tf_keras.models.load_model("model.keras")
    """
    import tf_keras

    from hypersparse_tf import mask_constraints

    registered = {}
    for cls in (HyperSparse, AdaptiveL1, AdaptiveL2, *mask_constraints.CONSTRAINTS):
        name = f"hypersparse_tf>{cls.__name__}"
        if tf_keras.saving.get_registered_object(name) is None:
            tf_keras.saving.register_keras_serializable(package="hypersparse_tf")(cls)
        registered[name] = cls
    return registered
