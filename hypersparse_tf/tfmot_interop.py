"""Hand-off of masks to tensorflow-model-optimization (tfmot).

tfmot 0.8 prunes only tf_keras (Keras 2) models. `to_tfmot` puts masks found by
HyperSparse/ART into tfmot's own `prune_low_magnitude` wrappers, with a pruning
schedule that never recomputes them, so that tfmot's fine-tuning
(`UpdatePruningStep`), `PruningSummaries`, `strip_pruning` and its
pruning-preserving quantization-aware training work as usual.

This is the only module of the package that imports tfmot, and only inside its
functions: importing tfmot sets `TF_USE_LEGACY_KERAS=1` and makes `tf.keras`
tf_keras for the whole process, which `import hypersparse_tf` must never do.

Masks found on a Keras 3 model go to a tf_keras twin: the same architecture
built with `tf_keras.layers` and the same layer names, weights copied layer by
layer. Mask keys are the same in both flavours (see `prunable`):

>>> for layer in keras3_model.layers:
...     if layer.weights:
...         twin.get_layer(layer.name).set_weights(layer.get_weights())
>>> pruned = hypersparse_tf.to_tfmot(twin, art.masks)
"""

import functools

import numpy as np

from hypersparse_tf import _keras_compat
from hypersparse_tf import mask_constraints
from hypersparse_tf import masks as masks_lib
from hypersparse_tf import prunable
from hypersparse_tf import regularizers

INSTALL = 'pip install "hypersparse_tf[tfmot]"'
_REGULARIZER_ATTRIBUTES = (
    "kernel_regularizer",
    "depthwise_regularizer",
    "pointwise_regularizer",
)
_CONSTRAINT_ATTRIBUTES = (
    "kernel_constraint",
    "depthwise_constraint",
    "pointwise_constraint",
)
_KERNEL_ATTRIBUTES = ("kernel", "depthwise_kernel", "pointwise_kernel")


def import_tfmot():
    """Imports and returns `tensorflow_model_optimization`.

    Raises:
        ImportError: naming the extra to install, if tfmot or tf_keras is
            missing.
    """
    try:
        import tensorflow_model_optimization as tfmot
    except ImportError as err:
        raise ImportError(
            "Handing masks to tensorflow-model-optimization needs the packages "
            "`tensorflow-model-optimization` and `tf-keras` (tfmot prunes "
            f"tf_keras models only). Install them with: {INSTALL}"
        ) from err
    return tfmot


@functools.cache
def fixed_mask_class():
    """The tfmot `PruningSchedule` that never updates the masks.

    Built on first use (it subclasses a tfmot class) and registered with
    tf_keras's serialization as `"hypersparse_tf>FixedMask"`, so that a model
    from `to_tfmot` saved with its pruning wrappers loads again inside
    `tfmot.sparsity.keras.prune_scope()` in a process that has called this
    function (or `to_tfmot`).

    Returns:
        The class `FixedMask(target_sparsity)`.
    """
    tfmot = import_tfmot()
    import tf_keras

    class FixedMask(tfmot.sparsity.keras.PruningSchedule):
        """A pruning schedule under which tfmot never recomputes a mask.

        Whatever the step, `__call__` answers "do not prune": the `mask`
        variables keep the values they were given.

        Args:
            target_sparsity: Float in [0, 1). The sparsity of the fixed mask,
                for information only. Defaults to `0.0`.
        """

        def __init__(self, target_sparsity=0.0):
            self.target_sparsity = float(target_sparsity)

        def __call__(self, step):
            import tensorflow as tf

            return (
                tf.constant(False),
                tf.constant(self.target_sparsity, tf.float32),
            )

        def get_config(self):
            return {
                "class_name": "hypersparse_tf>FixedMask",
                "config": {"target_sparsity": self.target_sparsity},
            }

    name = "hypersparse_tf>FixedMask"
    if tf_keras.saving.get_registered_object(name) is None:
        tf_keras.saving.register_keras_serializable(package="hypersparse_tf")(FixedMask)
    return tf_keras.saving.get_registered_object(name)


def _check_tf_keras_model(model):
    prunable.check_model(model)
    if not prunable.is_tf_keras(model):
        raise TypeError(
            "Invalid value for argument `model`. Expected a tf_keras (Keras 2) "
            "model: tensorflow-model-optimization 0.8 prunes tf_keras models "
            f"only, and {model.name!r} is a Keras 3 model. Build its tf_keras "
            "twin, the same architecture with `tf_keras.layers` and the same "
            "layer names, copy the weights layer by layer (`twin.get_layer("
            "layer.name).set_weights(layer.get_weights())` for every layer of "
            "the Keras 3 model that has weights), and pass the twin with the "
            f"same masks. Received: model of type {type(model).__module__}."
            f"{type(model).__name__}"
        )
    if not _is_clonable(model):
        raise ValueError(
            "Invalid value for argument `model`: tfmot wraps layers by cloning "
            "the model, which works for Sequential and functional tf_keras "
            f"models only; {model.name!r} is a layer or a subclassed model. "
            f"Received: model of type {type(model).__name__}"
        )


def _is_clonable(model):
    import tf_keras

    return isinstance(model, tf_keras.Sequential) or (
        isinstance(model, tf_keras.Model) and _keras_compat.is_graph_network(model)
    )


def _weight_attribute(layer, weight):
    """The name of the attribute of `layer` that holds `weight`."""
    names = [prunable.weight_name(weight), *_KERNEL_ATTRIBUTES]
    names += [name for name, value in vars(layer).items() if value is weight]
    for name in names:
        if getattr(layer, name, None) is weight:
            return name
    raise ValueError(
        f"to_tfmot cannot find the attribute of layer {layer.name!r} that holds "
        f"its weight {weight.name!r}; tfmot needs it to wrap the layer."
    )


def to_tfmot(model, masks, predicate=None):
    """Returns a tfmot-pruned copy of a tf_keras model with `masks` fixed.

    Every layer with a masked weight is wrapped in tfmot's own
    `prune_low_magnitude` wrapper; its `mask` variables hold exactly `masks`,
    its masked weights are 0, and its pruning schedule (`FixedMask`) never
    recomputes the masks. Fine-tune it with
    `tfmot.sparsity.keras.UpdatePruningStep()` (masked weights stay 0),
    watch it with `PruningSummaries`, and remove the wrappers with
    `tfmot.sparsity.keras.strip_pruning`, e.g. before tfmot's
    pruning-preserving quantization-aware training.

    Exactly the masked weights are pruned. Where tfmot's registry of built-in
    layers would prune other weights (it skips the kernel of a DepthwiseConv
    and the depthwise kernel of a SeparableConv) or does not know the layer,
    the layer names its masked weights through `get_prunable_weights`, tfmot's
    hook for custom layers. Such a wrapped layer does not load again from a
    saved file (tfmot's registry would rebuild it without those masks): save
    the model after `strip_pruning`, or keep to Dense and Conv layers to save
    it with its wrappers (load it inside `tfmot.sparsity.keras.prune_scope()`
    after `fixed_mask_class()` or `to_tfmot` ran in the process).

    The copy is new (the input model is not changed) and not compiled.
    `HyperSparse`, `AdaptiveL1` and `AdaptiveL2` regularizers and the mask
    constraints of `fix_masks` / `ART` are left out of it: with the mask in
    tfmot's wrappers they have no work left (ART sets the coefficient to 0 for
    fine-tuning). Other regularizers and constraints are kept.

    Args:
        model: A built Sequential or functional tf_keras model.
        masks: Dict `{"<layer name>/<weight name>": bool array}` with one mask
            per prunable weight, True = kept, as `ART.masks` or
            `global_magnitude_masks` give; masks from a Keras 3 twin fit.
        predicate: Optional callable `(layer, weight) -> bool` choosing the
            prunable weights; the one the masks were made with. Defaults to
            `None`.

    Returns:
        A tf_keras model with `PruneLowMagnitude` wrappers.

    Raises:
        TypeError: if `model` is a Keras 3 model (the message says how to make
            its tf_keras twin) or not a model.
        ValueError: naming the key of a missing, unknown or misshaped mask.
        ImportError: if tfmot is not installed (naming the extra to install).

    Example:

    >>> pruned = hypersparse_tf.to_tfmot(model, art.masks)
    >>> pruned.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    >>> pruned.fit(x, y, callbacks=[tfmot.sparsity.keras.UpdatePruningStep()])
    >>> final = tfmot.sparsity.keras.strip_pruning(pruned)
    """
    _check_tf_keras_model(model)
    # The prunable kernels, and with channel masks the removed channels'
    # biases and BatchNorm gamma/beta.
    named = {id(w) for w in masks_lib.masked_weights(model, masks, predicate).values()}
    entries = prunable.prunable_layers_and_weights(
        model, lambda layer, weight: id(weight) in named
    )
    checked = masks_lib.check_masks({key: w for key, _, w in entries}, masks)
    tfmot = import_tfmot()
    import tf_keras

    fixed_mask = fixed_mask_class()
    regularizers.register_with_tf_keras()
    masked = {}  # id(layer) -> [(key, attribute)]
    for key, layer, weight in entries:
        attribute = _weight_attribute(layer, weight)
        masked.setdefault(id(layer), []).append((key, attribute))
    copies = []  # (original layer, new layer)
    wrappers = []

    def copy_layer(layer):
        if isinstance(layer, tf_keras.Model) and not _is_clonable(layer):
            raise ValueError(
                f"to_tfmot cannot copy the subclassed model {layer.name!r} "
                "nested in the model: tfmot clones Sequential and functional "
                "models only."
            )
        if isinstance(layer, tf_keras.Model):
            return tf_keras.models.clone_model(layer, clone_function=copy_layer)
        config = layer.get_config()
        for attribute in _REGULARIZER_ATTRIBUTES:
            current = getattr(layer, attribute, None)
            if isinstance(current, regularizers.AdaptiveRegularizer):
                config[attribute] = None
        for attribute in _CONSTRAINT_ATTRIBUTES:
            # tfmot's wrapper holds the mask now; the weight's own stays.
            current = getattr(layer, attribute, None)
            if isinstance(current, mask_constraints.MaskConstraint):
                previous = current.previous
                config[attribute] = (
                    None
                    if previous is None
                    else tf_keras.constraints.serialize(previous)
                )
        new = layer.__class__.from_config(config)
        copies.append((layer, new))
        if id(layer) not in masked:
            return new
        attributes = [attribute for _, attribute in masked[id(layer)]]
        if _keras_compat.tfmot_pruned_weight_names(new) != attributes:
            # tfmot's hook for custom layers: its registry of built-in layers
            # would prune other weights of this layer, or does not know it.
            new.get_prunable_weights = functools.partial(_weights_of, new, attributes)
        kept = sum(int(checked[key].sum()) for key, _ in masked[id(layer)])
        size = sum(int(checked[key].size) for key, _ in masked[id(layer)])
        wrapper = tfmot.sparsity.keras.prune_low_magnitude(
            new, pruning_schedule=fixed_mask(1.0 - kept / size)
        )
        wrappers.append(wrapper)
        return wrapper

    pruned = tf_keras.models.clone_model(model, clone_function=copy_layer)
    for layer, new in copies:
        new.set_weights(layer.get_weights())
    _assign_masks(wrappers, checked)
    return pruned


def _weights_of(layer, attributes):
    return [getattr(layer, attribute) for attribute in attributes]


def _assign_masks(wrappers, checked):
    assigned = set()
    for wrapper in wrappers:
        for weight, mask, _ in wrapper.pruning_vars:
            key = prunable.weight_key(wrapper.layer, weight)
            mask.assign(checked[key].astype(mask.dtype.as_numpy_dtype))
            weight.assign(np.where(checked[key], weight.numpy(), 0))
            assigned.add(key)
    missing = sorted(set(checked) - assigned)
    if missing:  # pragma: no cover - a bug, not bad input
        raise RuntimeError(f"to_tfmot left the masks of {missing} unassigned.")
