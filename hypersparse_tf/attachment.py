"""Attaching a regularizer to the kernels of a model, and finding them again.

`attach(model, regularizer)` gives every prunable kernel (or, for a structured
HyperSparse, every kernel its structure groups) the one regularizer instance,
sets the layers' `kernel_regularizer` (`depthwise_`, `pointwise_`) so the model
saves and loads with it, and binds the regularizer to its kernels (and their
groups) for its global statistics. `ART` re-binds with `bind_attached` when
`fit` starts.
"""

from hypersparse_tf import _keras_compat
from hypersparse_tf import backend_state
from hypersparse_tf import groups
from hypersparse_tf import prunable
from hypersparse_tf import validation
from hypersparse_tf.regularizers import AdaptiveRegularizer
from hypersparse_tf.regularizers import register_with_tf_keras


def _current_regularizer(layer, weight):
    if prunable.is_tf_keras(layer):
        # tf_keras variables do not carry their regularizer: `attach` marks
        # them, and a regularizer given at construction sits on the layer.
        marked = _keras_compat.tf_keras_weight_regularizer(weight)
        if marked is not None or not prunable.is_kernel_name(weight):
            return marked
        return getattr(
            layer, prunable.layer_attribute(layer, weight, "regularizer"), None
        )
    return weight.regularizer


def _set_regularizer(layer, weight, regularizer):
    attribute = prunable.layer_attribute(layer, weight, "regularizer")
    if prunable.is_tf_keras(layer):
        _keras_compat.add_tf_keras_weight_regularizer(
            layer, prunable.weight_name(weight), weight, regularizer
        )
    else:
        weight.regularizer = regularizer
    if hasattr(layer, attribute):
        setattr(layer, attribute, regularizer)


def attach(model, regularizer, predicate=None):
    """Attaches `regularizer` to every prunable kernel of a built model.

    Also sets the layers' `kernel_regularizer` (or `depthwise_regularizer`,
    `pointwise_regularizer`) so that the model saves and loads with it. Layers
    that were given the same instance at construction are left as they are.
    Nothing is changed when an error is raised. On a tf_keras model it also
    registers the regularizers with tf_keras (see `register_with_tf_keras`);
    such a model saves and loads as a `.keras` file with one shared instance.

    Args:
        model: A built Keras model (Keras 3 or tf_keras).
        regularizer: A `HyperSparse`, `AdaptiveL1` or `AdaptiveL2` instance.
            One instance serves one model.
        predicate: Optional callable `(layer, weight) -> bool` that replaces
            the default choice of prunable kernels. Defaults to `None`.

    Returns:
        The list of regularized variables.

    Raises:
        ValueError: if the model is not built, has no prunable kernel, or one of
            its kernels already has another regularizer.

    Example:

    >>> reg = hypersparse_tf.HyperSparse(prune_rate=0.9)
    >>> kernels = hypersparse_tf.attach(model, reg)
    """
    if not isinstance(regularizer, AdaptiveRegularizer):
        raise TypeError(
            "Invalid value for argument `regularizer`. Expected a HyperSparse, "
            "AdaptiveL1 or AdaptiveL2 instance. Received: "
            f"regularizer={regularizer!r}"
        )
    structure = getattr(regularizer, "structure", "weight")
    if predicate is None and structure != "weight":
        prunable.check_model(model)
        predicate = groups.default_predicate(model, structure)
    entries = prunable.prunable_layers_and_weights(
        model, predicate, allow_empty=structure != "weight"
    )
    for key, layer, weight in entries:
        current = _current_regularizer(layer, weight)
        if current is not None and current is not regularizer:
            raise ValueError(
                f"Weight {key!r} already has the regularizer {current!r}. A "
                "kernel takes one regularizer: build the layer without it (use "
                "the optimizer's `weight_decay` for weight decay), or exclude "
                "it with `predicate`."
            )
    backend_state.check_trackable(model)
    grouping = None
    if structure != "weight":  # built (and checked) before anything changes
        grouping = groups.build_grouping(
            model,
            entries,
            structure,
            regularizer.block_shape,
            regularizer.normalize_groups,
        )
    if prunable.is_tf_keras(model):
        register_with_tf_keras()
    for _, layer, weight in entries:
        if _current_regularizer(layer, weight) is not regularizer:
            _set_regularizer(layer, weight, regularizer)
    kernels = [weight for _, _, weight in entries]
    regularizer.bind_kernels(kernels, grouping)
    _track(model, regularizer)
    # A train or test step traced by an earlier `fit`/`evaluate` lacks the new
    # losses.
    _keras_compat.drop_traced_steps(model)
    return kernels


def attached_weights(model, regularizer):
    """Returns `{key: variable}` for the weights of `model` that `regularizer`
    regularizes, whether set by `attach` or at the layers' construction.

    Args:
        model: A built Keras model (Keras 3 or tf_keras).
        regularizer: A regularizer instance.
    """
    entries = prunable.prunable_layers_and_weights(
        model,
        lambda layer, weight: _current_regularizer(layer, weight) is regularizer,
        allow_empty=True,
    )
    return {key: weight for key, _, weight in entries}


def bind_attached(model, regularizer):
    """Binds `regularizer` to the kernels of `model` it regularizes (and, when
    structured, their groups); returns `{key: variable}` of those kernels."""
    entries = prunable.prunable_layers_and_weights(
        model,
        lambda layer, weight: _current_regularizer(layer, weight) is regularizer,
        allow_empty=True,
    )
    grouping = None
    if entries and getattr(regularizer, "structure", "weight") != "weight":
        grouping = groups.build_grouping(
            model,
            entries,
            regularizer.structure,
            regularizer.block_shape,
            regularizer.normalize_groups,
        )
    kernels = {key: weight for key, _, weight in entries}
    if kernels:
        regularizer.bind_kernels(list(kernels.values()), grouping)
        _track(model, regularizer)
    return kernels


def _track(model, regularizer):
    """On JAX and PyTorch, the regularizer's variables join the model's state
    (see `backend_state`)."""
    state = getattr(regularizer, "state_variables", None)
    if state is not None:
        backend_state.track(model, backend_state.attribute_name(regularizer), state())


def art_prune_rate(regularizer, prune_rate):
    """The prune rate an `ART` schedule of `regularizer` uses.

    `HyperSparse` has its own (`prune_rate` must be None or equal to it);
    `AdaptiveL1` and `AdaptiveL2` have none, so `prune_rate` is required.
    """
    if not isinstance(regularizer, AdaptiveRegularizer):
        raise TypeError(
            validation.invalid(
                "regularizer",
                "a HyperSparse, AdaptiveL1 or AdaptiveL2 instance",
                regularizer,
            )
        )
    own_rate = getattr(regularizer, "prune_rate", None)
    if prune_rate is None and own_rate is None:
        raise ValueError(
            validation.invalid(
                "prune_rate",
                f"a float in (0, 1): {type(regularizer).__name__} has no prune "
                "rate of its own",
                None,
            )
        )
    prune_rate = prunable.check_prune_rate(
        own_rate if prune_rate is None else prune_rate
    )
    if own_rate is not None and prune_rate != own_rate:
        raise ValueError(
            validation.invalid(
                "prune_rate",
                f"None or the regularizer's prune_rate={own_rate}",
                prune_rate,
            )
        )
    return prune_rate
