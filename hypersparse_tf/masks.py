"""Global magnitude masks, applying them, and measuring sparsity.

A mask dictionary maps the key `"<layer name>/<weight name>"` of every prunable
weight to a boolean NumPy array of the weight's shape; True means kept.
"""

import collections.abc

import numpy as np

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
        Dict `{"<layer name>/<weight name>": bool array}`; True = kept. With
        `structure="channel"` it also masks the biases and the BatchNorm
        gamma and beta of the removed channels (in Keras 3 functional
        models), so that a removed channel is exactly 0 and `shrink` deletes
        it; `apply_masks`, `fix_masks` and ART take them with the kernels'.

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
    masks.update(groups.companion_masks(grouping, kept))
    return masks


def companion_entries(model):
    """`(key, layer, weight)` of every weight that channel masks may mask
    besides the kernels: biases and BatchNorm gamma and beta."""
    return prunable.prunable_layers_and_weights(
        model,
        lambda layer, weight: prunable.weight_name(weight) in groups.COMPANION_NAMES,
        allow_empty=True,
    )


def masked_weights(model, masks, predicate=None):
    """`{key: variable}` of the weights `masks` prune: the prunable kernels,
    and the channel companions (biases, BatchNorm gamma and beta) that channel
    masks name besides them."""
    weights = prunable.prunable_weights(model, predicate)
    if not isinstance(masks, collections.abc.Mapping):
        return weights
    extra = set(masks) - set(weights)
    if extra:
        for key, _, weight in companion_entries(model):
            if key in extra:
                weights[key] = weight
    return weights


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
            per prunable weight, True = kept, as `global_magnitude_masks` gives
            (with channel structure, also masks of the removed channels'
            biases and BatchNorm gamma and beta).
        predicate: Optional callable `(layer, weight) -> bool` choosing the
            prunable weights; must be the one the masks were made with.
            Defaults to `None`.

    Raises:
        ValueError: if a mask is missing, names no prunable weight, or has the
            wrong shape or values.
    """
    assign_masked(masked_weights(model, masks, predicate), masks)


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
