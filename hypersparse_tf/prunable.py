"""Which weights of a model are prunable, and how they are named.

A prunable weight is a convolution or dense kernel: the kernels of `Dense`,
`EinsumDense`, `Conv1D/2D/3D`, `Conv1D/2D/3DTranspose`, the depthwise kernel of
`DepthwiseConv1D/2D` and both kernels of `SeparableConv1D/2D`, wherever the layer
sits (nested models, custom layers; a shared layer is counted once). Biases and
normalization parameters never are. A user predicate can narrow or widen the set.

Each prunable weight is identified by the key `"<layer name>/<weight name>"`, the
form used by every mask dictionary of this package. Keys use Keras 3's weight
names in both Keras flavours, so that masks found on a Keras 3 model fit a
tf_keras twin with the same layer names: the kernel of a tf_keras
`DepthwiseConv1D/2D`, which tf_keras names `depthwise_kernel`, has the key
`"<layer name>/kernel"` as in Keras 3.
"""

import math
import sys

import keras

from hypersparse_tf import _keras_compat
from hypersparse_tf import validation

_LAYER_TYPE_NAMES = (
    "Dense",
    "EinsumDense",
    "Conv1D",
    "Conv2D",
    "Conv3D",
    "Conv1DTranspose",
    "Conv2DTranspose",
    "Conv3DTranspose",
    "DepthwiseConv1D",
    "DepthwiseConv2D",
    "SeparableConv1D",
    "SeparableConv2D",
)
_KERNEL_NAMES = ("kernel", "depthwise_kernel", "pointwise_kernel")


def _layer_types(layers_module):
    return tuple(
        getattr(layers_module, name)
        for name in _LAYER_TYPE_NAMES
        if hasattr(layers_module, name)
    )


_KERAS_LAYER_TYPES = _layer_types(keras.layers)


def _tf_keras():
    """The tf_keras module if something imported it already, else None."""
    return sys.modules.get("tf_keras")


def is_tf_keras(obj):
    """Whether `obj` is a tf_keras (Keras 2) layer or model."""
    tf_keras = _tf_keras()
    return tf_keras is not None and isinstance(obj, tf_keras.layers.Layer)


def _is_layer(obj):
    return isinstance(obj, keras.layers.Layer) or is_tf_keras(obj)


def weight_name(weight):
    """Short name of a weight: `"kernel"` for both Keras flavours."""
    name = weight.name.split("/")[-1]
    return name.split(":")[0]


def weight_key(layer, weight):
    """The key `"<layer name>/<weight name>"` of a weight owned by `layer`.

    The weight name is Keras 3's in both flavours: a tf_keras DepthwiseConv
    kernel (`depthwise_kernel`) is keyed `"<layer name>/kernel"`.
    """
    name = weight_name(weight)
    if name == "depthwise_kernel" and _is_tf_keras_depthwise(layer):
        name = "kernel"
    return f"{layer.name}/{name}"


def _is_tf_keras_depthwise(layer):
    if not is_tf_keras(layer):
        return False
    layers = _tf_keras().layers
    types = tuple(
        getattr(layers, name)
        for name in ("DepthwiseConv1D", "DepthwiseConv2D")
        if hasattr(layers, name)
    )
    return isinstance(layer, types)


def is_prunable_kernel(layer, weight):
    """The default rule: whether `weight` of `layer` is a prunable kernel.

    Use it inside a custom predicate to narrow or widen the default set, e.g.
    `lambda layer, w: is_prunable_kernel(layer, w) and layer.name != "logits"`.

    Args:
        layer: A Keras layer (Keras 3 or tf_keras).
        weight: A variable owned directly by `layer`.

    Returns:
        bool.
    """
    if is_tf_keras(layer):
        types = _layer_types(_tf_keras().layers)
    else:
        types = _KERAS_LAYER_TYPES
    return isinstance(layer, types) and is_kernel_name(weight)


def _own_weights(layer):
    """Weights owned by `layer` itself, not by one of its sublayers."""
    children = _keras_compat.flatten_layers(layer, include_self=False, recursive=False)
    child_ids = {id(w) for child in children for w in child.weights}
    return [w for w in layer.weights if id(w) not in child_ids]


def layer_attribute(layer, weight, kind):
    """The layer attribute that serializes the `kind` of `weight`.

    Args:
        layer: The layer that owns `weight`.
        weight: A kernel of `layer`.
        kind: `"regularizer"` or `"constraint"`.

    Returns:
        `"kernel_<kind>"`, `"depthwise_<kind>"` (the kernel of a DepthwiseConv,
        the depthwise kernel of a SeparableConv) or `"pointwise_<kind>"`.
    """
    name = weight_name(weight)
    if name in ("bias", "gamma", "beta"):
        return f"{name}_{kind}"
    if name == "pointwise_kernel":
        return f"pointwise_{kind}"
    if name == "depthwise_kernel" or hasattr(layer, f"depthwise_{kind}"):
        return f"depthwise_{kind}"
    return f"kernel_{kind}"


def check_model(model, argument="model"):
    """Raises unless `model` is a built Keras layer or model."""
    if not _is_layer(model):
        raise TypeError(
            f"Invalid value for argument `{argument}`. Expected a Keras model "
            f"(Keras 3 or tf_keras). Received: {argument}={model!r} of type "
            f"{type(model).__name__}"
        )
    if not model.built:
        raise ValueError(
            f"Invalid value for argument `{argument}`: the model is not built, "
            "so it has no weights yet. Build it first, e.g. with "
            "`model.build(input_shape)`, by calling it on a batch, or by giving "
            f"its first layer an input shape. Received: {argument}={model.name!r}"
        )


def is_kernel_name(weight):
    """Whether the short name of `weight` is one of a kernel's names."""
    return weight_name(weight) in _KERNEL_NAMES


def prunable_layers_and_weights(model, predicate=None, allow_empty=False):
    """Like `prunable_weights`, as a list of `(key, layer, weight)` triples."""
    check_model(model)
    rule = predicate if predicate is not None else is_prunable_kernel
    if not callable(rule):
        raise TypeError(
            validation.invalid(
                "predicate", "a callable (layer, weight) -> bool or None", predicate
            )
        )
    found = []
    keys = set()
    seen = set()
    for layer in _keras_compat.flatten_layers(model):
        for weight in _own_weights(layer):
            if id(weight) in seen or not rule(layer, weight):
                continue
            seen.add(id(weight))
            key = weight_key(layer, weight)
            if key in keys:
                raise ValueError(
                    f"Two prunable weights of model {model.name!r} share the key "
                    f"{key!r}. Give the layers unique names."
                )
            keys.add(key)
            found.append((key, layer, weight))
    if not found and not allow_empty:
        raise ValueError(
            f"Invalid value for argument `model`: model {model.name!r} has no "
            "prunable weight (no Dense, EinsumDense, Conv or DepthwiseConv/"
            "SeparableConv kernel, and no weight accepted by `predicate`)."
        )
    return found


def prunable_weights(model, predicate=None):
    """Returns the prunable weights of a built model.

    Args:
        model: A built Keras model or layer (Keras 3 or tf_keras).
        predicate: Optional callable `(layer, weight) -> bool`, called for every
            weight of every layer (nested ones included); it replaces the
            default rule `is_prunable_kernel`. Defaults to `None`.

    Returns:
        Dict `{"<layer name>/<weight name>": variable}` in layer order.

    Raises:
        ValueError: if the model is not built, has no prunable weight, or two
            prunable weights would share one key.
    """
    return {
        key: weight for key, _, weight in prunable_layers_and_weights(model, predicate)
    }


def check_prune_rate(prune_rate, argument="prune_rate"):
    """Returns `prune_rate` as a float after checking it lies in (0, 1)."""
    return validation.check_fraction(
        prune_rate, argument, "the fraction of weights to remove"
    )


def num_pruned(prune_rate, size):
    """`floor(prune_rate * size)`: how many of `size` weights are removed.

    The same float expression as the reference code, so the counts agree.
    """
    return math.floor(prune_rate * size)
