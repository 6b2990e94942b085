"""What a model costs to store and to run: parameters and multiply-adds.

`model_cost` counts the multiply-accumulates (MACs) of one inference of a
Keras 3 model, batch 1, in its Dense and convolution layers (BatchNorm folds
into the convolutions on export; pooling, activations and merges are not
counted), dense: a removed channel lowers them, zeros inside a kernel do not.
`export.inspect_tflite` counts the same in a TFLite model.
"""

import math

import keras

from hypersparse_tf import channel_graph


def _spatial(shape, layer):
    """The product of the spatial dimensions of a (batch, ...) shape."""
    dims = shape[1:-1]
    if getattr(layer, "data_format", "channels_last") == "channels_first":
        dims = shape[2:]
    return math.prod(int(d) for d in dims)


def _channels(shape, layer):
    if getattr(layer, "data_format", "channels_last") == "channels_first":
        return int(shape[1])
    return int(shape[-1])


def layer_macs(layer, input_shape, output_shape):
    """Dense MACs of one call of `layer` (batch 1); 0 for layers without
    multiplications by weights."""
    layers = keras.layers
    if isinstance(layer, layers.Dense):
        return math.prod(int(d) for d in input_shape[1:]) * int(layer.units)
    window = math.prod(int(d) for d in getattr(layer, "kernel_size", ()) or (1,))
    channels_in = _channels(input_shape, layer)
    transpose = (layers.Conv1DTranspose, layers.Conv2DTranspose, layers.Conv3DTranspose)
    if isinstance(layer, transpose):
        return _spatial(input_shape, layer) * window * channels_in * layer.filters
    positions = _spatial(output_shape, layer)
    if isinstance(layer, (layers.DepthwiseConv1D, layers.DepthwiseConv2D)):
        return positions * window * channels_in * layer.depth_multiplier
    if isinstance(layer, (layers.SeparableConv1D, layers.SeparableConv2D)):
        depthwise = channels_in * layer.depth_multiplier
        return positions * depthwise * (window + layer.filters)
    if isinstance(layer, (layers.Conv1D, layers.Conv2D, layers.Conv3D)):
        return positions * window * (channels_in // layer.groups) * layer.filters
    return 0


def model_cost(model):
    """Parameters and MACs of a Keras 3 Sequential or functional model.

    Args:
        model: A built Keras 3 Sequential (with a known input shape) or
            functional model.

    Returns:
        Dict with `"parameters"` (`model.count_params()`), `"macs"` (dense
        multiply-accumulates of one inference, batch 1, in `Dense` and
        convolution layers, nested models included) and
        `"layers"`: `{layer name: MACs}` of the layers that have any.

    Raises:
        TypeError: if `model` is not a Keras 3 Sequential or functional model.
        ValueError: if a Sequential model has no known input shape.

    Example:

    >>> hypersparse_tf.model_cost(hypersparse_tf.models.lenet_300_100())["macs"]
    266200
    """
    per_layer = {}
    for node in channel_graph.layer_calls(model):
        layer = node.operation
        if isinstance(layer, keras.Model):
            macs = model_cost(layer)["macs"]
        elif not node.input_tensors or not node.output_tensors:
            continue
        else:
            macs = layer_macs(
                layer,
                node.input_tensors[0].shape,
                node.output_tensors[0].shape,
            )
        if macs:
            per_layer[layer.name] = per_layer.get(layer.name, 0) + int(macs)
    return {
        "parameters": int(model.count_params()),
        "macs": int(sum(per_layer.values())),
        "layers": per_layer,
    }
