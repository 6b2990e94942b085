"""Global magnitude masks, applying them, and measuring sparsity.

A mask dictionary maps the key `"<layer name>/<weight name>"` of every prunable
weight to a boolean NumPy array of the weight's shape; True means kept.
"""

import base64
import collections.abc

import keras
import numpy as np
import tensorflow as tf

from hypersparse_tf import _keras_compat
from hypersparse_tf import groups
from hypersparse_tf import prunable


def _values(weights):
    return {key: np.asarray(weight.numpy()) for key, weight in weights.items()}


def magnitude_masks(values, prune_rate):
    """Global magnitude masks for a dictionary of arrays.

    One threshold over all arrays: exactly `floor(prune_rate * N)` entries are
    removed, the smallest magnitudes first; among entries equal to the threshold
    the first ones in key order and row-major order go.

    Args:
        values: Dict `{key: array}`.
        prune_rate: Float in (0, 1). Fraction of the entries to remove.

    Returns:
        Dict `{key: bool array}` of the same shapes; True = kept.
    """
    prune_rate = prunable.check_prune_rate(prune_rate)
    flat = np.concatenate([np.abs(np.ravel(v)) for v in values.values()])
    num_removed = prunable.num_pruned(prune_rate, flat.size)
    removed = np.zeros(flat.size, dtype=bool)
    if num_removed > 0:
        threshold = np.partition(flat, num_removed)[num_removed]
        removed = flat < threshold
        missing = num_removed - int(np.count_nonzero(removed))
        removed[np.flatnonzero(flat == threshold)[:missing]] = True
    masks = {}
    offset = 0
    for key, value in values.items():
        size = np.size(value)
        masks[key] = ~removed[offset : offset + size].reshape(np.shape(value))
        offset += size
    return masks


def global_magnitude_masks(
    model,
    prune_rate,
    predicate=None,
    structure="weight",
    block_shape=None,
    normalize_groups=True,
    min_groups=1,
):
    """Masks that prune a model by global weight (or group) magnitude.

    Args:
        model: A built Keras model (Keras 3 or tf_keras).
        prune_rate: Float in (0, 1). Fraction of all prunable weights to
            remove: exactly `floor(prune_rate * N)` of them; with a structure,
            the fraction of the `G` groups (channels, units or blocks; see
            `hypersparse_tf.groups`): exactly `floor(prune_rate * G)`.
        predicate: Optional callable `(layer, weight) -> bool` choosing the
            prunable weights (see `prunable_weights`). Defaults to `None`:
            every prunable kernel; with a structure, the kernels it groups
            (the other prunable kernels get masks that keep everything).
        structure: `"weight"`, `"channel"` or `"block"`. Defaults to
            `"weight"`.
        block_shape: `(1, B)` for blocks. Defaults to `None` (`(1, 4)`).
        normalize_groups: Bool. Group magnitude = L2 norm / sqrt(size).
            Defaults to `True`.
        min_groups: Int >= 0. Groups each kernel keeps (structures only).
            Defaults to `1`.

    Returns:
        Dict `{"<layer name>/<weight name>": bool array}`; True = kept.

    Example:

    >>> masks = hypersparse_tf.global_magnitude_masks(model, 0.9)
    >>> hypersparse_tf.apply_masks(model, masks)
    """
    prune_rate = prunable.check_prune_rate(prune_rate)
    structure, block_shape = groups.check_structure(structure, block_shape)
    if structure == "weight":
        return magnitude_masks(
            _values(prunable.prunable_weights(model, predicate)), prune_rate
        )
    prunable.check_model(model)
    chosen = predicate or groups.default_predicate(model, structure)
    entries = prunable.prunable_layers_and_weights(model, chosen)
    grouping = groups.build_grouping(
        model, entries, structure, block_shape, normalize_groups
    )
    values = [np.asarray(weight.numpy()) for _, _, weight in entries]
    kept = groups.structured_masks(values, grouping, prune_rate, min_groups)
    masks = {key: mask for (key, _, _), mask in zip(entries, kept, strict=True)}
    if predicate is None:  # the other prunable kernels stay whole
        for key, weight in prunable.prunable_weights(model).items():
            masks.setdefault(key, np.ones(weight.shape, bool))
    return masks


def check_masks(weights, masks, argument="masks"):
    """Returns the masks as bool arrays after checking they fit `weights`.

    Args:
        weights: Dict `{key: variable}`, e.g. from `prunable_weights`.
        masks: The masks to check.
        argument: Name of the argument in error messages.

    Raises:
        ValueError: naming the first missing, unknown or misshaped key.
    """
    if not isinstance(masks, collections.abc.Mapping):
        raise TypeError(
            f"Invalid value for argument `{argument}`. Expected a dict "
            "{'<layer name>/<weight name>': bool array}. Received: "
            f"{argument} of type {type(masks).__name__}"
        )
    missing = [key for key in weights if key not in masks]
    if missing:
        raise ValueError(
            f"Invalid value for argument `{argument}`: no mask for the prunable "
            f"weight {missing[0]!r} ({len(missing)} missing in all). Expected "
            f"one mask per key in {list(weights)}."
        )
    unknown = [key for key in masks if key not in weights]
    if unknown:
        raise ValueError(
            f"Invalid value for argument `{argument}`: key {unknown[0]!r} names "
            f"no prunable weight of the model. Expected keys: {list(weights)}."
        )
    checked = {}
    for key, weight in weights.items():
        mask = np.asarray(masks[key])
        if mask.shape != tuple(weight.shape):
            raise ValueError(
                f"Invalid value for argument `{argument}`: the mask of {key!r} "
                f"has shape {mask.shape}. Expected the weight's shape "
                f"{tuple(weight.shape)}."
            )
        if mask.dtype != bool:
            if mask.size and not np.all((mask == 0) | (mask == 1)):
                raise ValueError(
                    f"Invalid value for argument `{argument}`: the mask of "
                    f"{key!r} holds values other than 0/1 or True/False."
                )
            mask = mask.astype(bool)
        checked[key] = mask
    return checked


def apply_masks(model, masks, predicate=None):
    """Sets every prunable weight outside its mask to exactly zero.

    All masks are checked before any weight changes: on error, no weight is
    touched.

    Args:
        model: A built Keras model (Keras 3 or tf_keras).
        masks: Dict `{"<layer name>/<weight name>": bool array}` with one mask
            per prunable weight, True = kept, as `global_magnitude_masks` gives.
        predicate: Optional callable `(layer, weight) -> bool` choosing the
            prunable weights; must be the one the masks were made with.
            Defaults to `None`.

    Raises:
        ValueError: if a mask is missing, names no prunable weight, or has the
            wrong shape or values.
    """
    assign_masked(prunable.prunable_weights(model, predicate), masks)


def assign_masked(weights, masks):
    """Zeroes the entries of `weights` outside `masks`, after checking all.

    Args:
        weights: Dict `{key: variable}`.
        masks: Dict `{key: bool array}` with exactly the keys of `weights`.
    """
    checked = check_masks(weights, masks)
    for key, weight in weights.items():
        value = np.asarray(weight.numpy())
        weight.assign(np.where(checked[key], value, np.zeros_like(value)))


def _mask_variable(values, name):
    return tf.Variable(
        np.asarray(values, np.float32), trainable=False, name=f"mask_{name}"
    )


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
        if not isinstance(mask, (tf.Variable, keras.Variable)):
            mask = _mask_variable(mask, "loaded")
        self.mask = mask
        self.previous = previous

    def __call__(self, w):
        if self.previous is not None:
            w = self.previous(w)
        return w * tf.cast(self.mask, w.dtype)

    def get_config(self):
        kept = np.asarray(self.mask.numpy()) != 0
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


def _strategy(model):
    return getattr(model, "distribute_strategy", None) or tf.distribute.get_strategy()


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
    with _strategy(model).scope():
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
            per prunable weight, True = kept, as `global_magnitude_masks` gives.
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
    weights = prunable.prunable_weights(model, predicate)
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
    for _, layer, weight in prunable.prunable_layers_and_weights(model, predicate):
        constraint = variable_constraint(weight)
        if isinstance(constraint, MaskConstraint):
            _set_constraint(layer, weight, constraint.previous)
    _keras_compat.drop_traced_steps(model)


def fraction_of_zeros(weights):
    """Fraction of the entries of the variables in `weights` that are 0."""
    values = _values(weights).values()
    zeros = sum(int(np.size(v) - np.count_nonzero(v)) for v in values)
    return zeros / sum(int(np.size(v)) for v in values)


def sparsity_counts(model, predicate=None):
    """Returns `{key: (zeros, size)}` over the prunable weights of `model`."""
    counts = {}
    for key, value in _values(prunable.prunable_weights(model, predicate)).items():
        counts[key] = (int(value.size - np.count_nonzero(value)), int(value.size))
    return counts


def sparsity(model, predicate=None):
    """Fraction of the prunable weights of `model` that are exactly zero.

    Args:
        model: A built Keras model (Keras 3 or tf_keras).
        predicate: Optional callable `(layer, weight) -> bool` choosing the
            prunable weights. Defaults to `None`.

    Returns:
        Float in [0, 1].
    """
    counts = sparsity_counts(model, predicate).values()
    return sum(zeros for zeros, _ in counts) / sum(size for _, size in counts)


def sparsity_report(model, predicate=None):
    """A table, one row per prunable weight, of its size and sparsity.

    Args:
        model: A built Keras model (Keras 3 or tf_keras).
        predicate: Optional callable `(layer, weight) -> bool` choosing the
            prunable weights. Defaults to `None`.

    Returns:
        A multi-line string, ending with the total over all prunable weights.
    """
    weights = prunable.prunable_weights(model, predicate)
    counts = sparsity_counts(model, predicate)
    rows = [
        (key, str(tuple(weights[key].shape)), size, size - zeros, zeros / size)
        for key, (zeros, size) in counts.items()
    ]
    total_zeros = sum(zeros for zeros, _ in counts.values())
    total_size = sum(size for _, size in counts.values())
    rows.append(
        ("total", "", total_size, total_size - total_zeros, total_zeros / total_size)
    )
    key_width = max(len("weight"), *(len(row[0]) for row in rows))
    shape_width = max(len("shape"), *(len(row[1]) for row in rows))
    header = (
        f"{'weight':<{key_width}}  {'shape':<{shape_width}}  "
        f"{'size':>10}  {'non-zero':>10}  {'sparsity':>8}"
    )
    lines = [header, "-" * len(header)]
    for index, (key, shape, size, nonzero, fraction) in enumerate(rows):
        if index == len(rows) - 1:
            lines.append("-" * len(header))
        lines.append(
            f"{key:<{key_width}}  {shape:<{shape_width}}  {size:>10,d}  "
            f"{nonzero:>10,d}  {fraction:>8.2%}"
        )
    return "\n".join(lines)
