"""Masks enforced in-graph: constraints that keep pruned weights at zero.

`fix_masks(model, masks)` gives each prunable weight a `MaskConstraint` that
the optimizer applies after every update, inside the compiled train step;
`ART` installs its own `ARTMaskConstraint` (all ones until fine-tuning). Both
save with the model: the mask is in the constraint's config, bit-packed.
"""

import base64
import contextlib

import keras
import numpy as np

from hypersparse_tf import _keras_compat
from hypersparse_tf import backend_state
from hypersparse_tf import masks as masks_lib
from hypersparse_tf import prunable
from hypersparse_tf.masks import assign_masked
from hypersparse_tf.masks import check_masks


def _mask_variable(values, name):
    """A float32 mask variable: `tf.Variable` under TensorFlow (tf_keras and
    `tf.distribute` take it), `keras.Variable` elsewhere."""
    values = np.asarray(values, np.float32)
    if backend_state.is_tensorflow():
        import tensorflow as tf

        return tf.Variable(values, trainable=False, name=f"mask_{name}")
    return keras.Variable(values, trainable=False, dtype="float32", name=f"mask_{name}")


@keras.saving.register_keras_serializable(package="hypersparse_tf")
class MaskConstraint(keras.constraints.Constraint):
    """Multiplies a weight by a mask variable after each optimizer update.

    `previous` (the weight's own constraint, if any) is applied first. Works
    as a Keras 3 and as a tf_keras constraint: both optimizers call it after
    each update, inside the compiled train step. It saves with the model: its
    config holds the mask bit-packed (N / 8 bytes, base64), so a model saved
    to `.keras` mid-run and loaded keeps its pruned weights at zero.

    Args:
        mask: Variable or bool/0-1 array of the weight's shape; 1 = kept.
        previous: The weight's own constraint, or None. Defaults to `None`.
    """

    def __init__(self, mask, previous=None):
        if not hasattr(mask, "assign"):  # an array: a new variable
            mask = _mask_variable(mask, "loaded")
        self.mask = mask
        self.previous = previous

    def __call__(self, w):
        if self.previous is not None:
            w = self.previous(w)
        # On JAX the optimizer reads the mask when the step is traced: a new
        # mask takes a new train function (`refresh_compiled_masks`).
        mask = self.mask if backend_state.is_tensorflow() else self.mask.value
        return w * keras.ops.cast(mask, w.dtype)

    def get_config(self):
        kept = keras.ops.convert_to_numpy(self.mask) != 0
        previous = None
        if self.previous is not None:
            previous = _constraints_module(self.previous).serialize(self.previous)
        return {
            "shape": list(kept.shape),
            "packed": base64.b64encode(np.packbits(kept.ravel())).decode("ascii"),
            "previous": previous,
            "flavour": "tf_keras" if _is_tf_keras_object(self.previous) else "keras",
        }

    @classmethod
    def from_config(cls, config):
        shape = tuple(config["shape"])
        bits = np.frombuffer(base64.b64decode(config["packed"]), np.uint8)
        size = int(np.prod(shape))
        kept = np.unpackbits(bits)[:size].reshape(shape).astype(bool)
        previous = config.get("previous")
        if previous is not None:
            import sys

            module = keras
            if config.get("flavour") == "tf_keras":
                module = sys.modules["tf_keras"]
            previous = module.constraints.deserialize(previous)
        return cls(kept, previous)


@keras.saving.register_keras_serializable(package="hypersparse_tf")
class ARTMaskConstraint(MaskConstraint):
    """ART's mask: all ones until fine-tuning. The optimizer reads constraints
    when the train step is traced, so ART installs it for the whole run."""


CONSTRAINTS = (MaskConstraint, ARTMaskConstraint)


def _is_tf_keras_object(obj):
    import sys

    tf_keras = sys.modules.get("tf_keras")
    return tf_keras is not None and isinstance(obj, tf_keras.constraints.Constraint)


def _constraints_module(obj):
    import sys

    if _is_tf_keras_object(obj):
        return sys.modules["tf_keras"].constraints
    return keras.constraints


def variable_constraint(variable):
    """The constraint the optimizer applies to `variable`, or None."""
    return getattr(variable, "constraint", None)


def _strategy_scope(model):
    """The scope of the model's `tf.distribute` strategy (TensorFlow only)."""
    if not backend_state.is_tensorflow():
        return contextlib.nullcontext()
    import tensorflow as tf

    strategy = getattr(model, "distribute_strategy", None)
    return (strategy or tf.distribute.get_strategy()).scope()


def refresh_compiled_masks(model):
    """After mask variables changed during `fit`: on the backends whose
    compiled step holds the masks as constants (all but TensorFlow), builds
    the train function anew, which `fit` picks up at its next step."""
    if (
        not backend_state.is_tensorflow()
        and getattr(model, "train_function", None) is not None
    ):
        model.make_train_function(force=True)


def install_mask_constraints(model, weights, masks, kind=MaskConstraint):
    """Gives each weight a `kind` constraint holding a new mask variable.

    The mask variables are created in the model's distribution strategy. A
    weight's own constraint is kept and applied first; an earlier constraint
    of class `kind` is replaced (so `ARTMaskConstraint` replaces only an
    earlier ART's mask and keeps a `fix_masks` one, while `MaskConstraint`
    replaces any mask). The layer's `kernel_constraint` (or
    `depthwise_constraint`, `pointwise_constraint`) is set too, so that the
    constraint saves with the model.

    Args:
        model: The model that owns `weights`.
        weights: Dict `{key: variable}`.
        masks: Dict `{key: bool array}` with the keys of `weights` (checked).
        kind: `MaskConstraint` or a subclass. Defaults to `MaskConstraint`.

    Returns:
        Dict `{key: mask variable}` (float32, 1 = kept).
    """
    with _strategy_scope(model):
        variables = {
            key: _mask_variable(masks[key], key.replace("/", "_")) for key in weights
        }
    layers = _layers_of(model, weights)
    for key, weight in weights.items():
        previous = variable_constraint(weight)
        if isinstance(previous, kind):
            previous = previous.previous
        _set_constraint(layers[key], weight, kind(variables[key], previous))
    return variables


def _layers_of(model, weights):
    """`{key: layer}` of the layers that own `weights`."""
    ids = {id(w) for w in weights.values()}
    entries = prunable.prunable_layers_and_weights(
        model, lambda layer, weight: id(weight) in ids, allow_empty=True
    )
    return {key: layer for key, layer, _ in entries}


def _set_constraint(layer, weight, constraint):
    """The constraint of `weight`, for the optimizer and for saving."""
    _keras_compat.set_constraint(weight, constraint)
    attribute = prunable.layer_attribute(layer, weight, "constraint")
    if hasattr(layer, attribute):
        setattr(layer, attribute, constraint)


def has_mask_constraints(weights, kind):
    """Whether every weight has a constraint of class `kind`."""
    return all(isinstance(variable_constraint(w), kind) for w in weights.values())


def assign_mask_variables(variables, masks):
    """Loads `masks` into the mask variables of `install_mask_constraints`."""
    for key, variable in variables.items():
        variable.assign(np.asarray(masks[key], np.float32))


def fix_masks(model, masks, predicate=None):
    """Prunes `model` with `masks` and keeps the pruned weights at zero.

    Sets every weight outside its mask to zero (as `apply_masks`) and gives
    each prunable weight a `MaskConstraint`, which the optimizer applies after
    every update, in the compiled train step: pruned weights stay exactly zero
    through any later `fit`. This is fine-tuning with a fixed mask, e.g. after
    one-shot magnitude pruning. A weight's own constraint is kept and applied
    first; calling `fix_masks` again replaces the masks. All masks are checked
    before anything changes. A train step traced by an earlier `fit` is
    dropped, as `compile` does, so the next `fit` traces one with the
    constraints. `release_masks` undoes the constraints (not the zeros). The
    masks save with the model (`.keras`; for tf_keras, call
    `register_with_tf_keras()` before loading in a fresh process): a loaded
    model keeps its pruned weights at zero through further training.

    Args:
        model: A built Keras model (Keras 3 or tf_keras).
        masks: Dict `{"<layer name>/<weight name>": bool array}` with one mask
            per prunable weight, True = kept, as `global_magnitude_masks` gives
            (channel masks also mask biases and BatchNorm gamma and beta:
            those weights get a constraint too).
        predicate: Optional callable `(layer, weight) -> bool` choosing the
            prunable weights; must be the one the masks were made with.
            Defaults to `None`.

    Raises:
        ValueError: if a mask is missing, names no prunable weight, or has the
            wrong shape or values.

    Example:

    >>> masks = hypersparse_tf.global_magnitude_masks(model, 0.9)
    >>> hypersparse_tf.fix_masks(model, masks)
    >>> model.fit(x_train, y_train, epochs=10)  # 90% of the kernels stay 0
    """
    weights = masks_lib.masked_weights(model, masks, predicate)
    checked = check_masks(weights, masks)
    if prunable.is_tf_keras(model):
        from hypersparse_tf import regularizers

        regularizers.register_with_tf_keras()  # the constraints save with it
    assign_masked(weights, checked)
    install_mask_constraints(model, weights, checked)
    _keras_compat.drop_traced_steps(model)


def release_masks(model, predicate=None):
    """Removes the `MaskConstraint`s of `fix_masks` from `model`'s weights.

    The weights keep their values (pruned ones stay zero until trained); each
    weight gets back its own constraint.
    """
    entries = prunable.prunable_layers_and_weights(model, predicate)
    entries += masks_lib.companion_entries(model)
    for _, layer, weight in entries:
        constraint = variable_constraint(weight)
        if isinstance(constraint, MaskConstraint):
            _set_constraint(layer, weight, constraint.previous)
    _keras_compat.drop_traced_steps(model)
