"""Channel groups of a Keras 3 functional model: which channels go together.

A group is a set of channels that must go or stay together: the output
channels of one or more producers (`Dense`, `Conv1D/2D/3D`,
`SeparableConv1D/2D`; several when merged by `Add` and the other merge
layers), followed through channel-wise layers (BatchNorm, element-wise
activations, dropout, pooling, cropping, upsampling, zero padding, `Flatten`,
and `DepthwiseConv1D/2D`, which maps channel `c` to channel `c`). The
channels of the model's inputs and outputs, and those next to a layer this
module does not understand, are fixed: they stay. `shrink` removes the
channels of unfixed groups that carry nothing.
"""

import math

import keras
import numpy as np

from hypersparse_tf import _keras_compat

DENSE = (keras.layers.Dense,)
_CONV = (keras.layers.Conv1D, keras.layers.Conv2D, keras.layers.Conv3D)
SEPARABLE = (keras.layers.SeparableConv1D, keras.layers.SeparableConv2D)
DEPTHWISE = (keras.layers.DepthwiseConv1D, keras.layers.DepthwiseConv2D)
# Zero padding keeps a channel that is constant 0 constant, not another one.
_PADDING = (
    keras.layers.ZeroPadding1D,
    keras.layers.ZeroPadding2D,
    keras.layers.ZeroPadding3D,
)

# Element-wise activation functions: a constant channel stays constant, and
# removing a channel leaves the others unchanged (unlike softmax).
_ELEMENTWISE_ACTIVATIONS = (
    "linear",
    "relu",
    "relu6",
    "leaky_relu",
    "elu",
    "selu",
    "gelu",
    "silu",
    "swish",
    "mish",
    "sigmoid",
    "hard_sigmoid",
    "hard_silu",
    "hard_swish",
    "tanh",
    "softplus",
    "softsign",
    "exponential",
)
_ACTIVATION_LAYERS = (keras.layers.ReLU, keras.layers.LeakyReLU, keras.layers.ELU)

# Layers that map a spatially constant channel to the same constant at
# inference and never mix channels.
_CONSTANT_PRESERVING = (
    keras.layers.Dropout,
    keras.layers.SpatialDropout1D,
    keras.layers.SpatialDropout2D,
    keras.layers.SpatialDropout3D,
    keras.layers.GaussianDropout,
    keras.layers.GaussianNoise,
    keras.layers.AlphaDropout,
    keras.layers.ActivityRegularization,
    keras.layers.Identity,
    keras.layers.MaxPooling1D,
    keras.layers.MaxPooling2D,
    keras.layers.MaxPooling3D,
    keras.layers.AveragePooling1D,
    keras.layers.AveragePooling2D,
    keras.layers.AveragePooling3D,
    keras.layers.GlobalMaxPooling1D,
    keras.layers.GlobalMaxPooling2D,
    keras.layers.GlobalMaxPooling3D,
    keras.layers.GlobalAveragePooling1D,
    keras.layers.GlobalAveragePooling2D,
    keras.layers.GlobalAveragePooling3D,
    keras.layers.Cropping1D,
    keras.layers.Cropping2D,
    keras.layers.Cropping3D,
    keras.layers.UpSampling1D,
    keras.layers.UpSampling2D,
    keras.layers.UpSampling3D,
)
MERGES = {
    keras.layers.Add: lambda values: np.sum(values, axis=0),
    keras.layers.Subtract: lambda values: values[0] - values[1],
    keras.layers.Average: lambda values: np.mean(values, axis=0),
    keras.layers.Maximum: lambda values: np.max(values, axis=0),
    keras.layers.Minimum: lambda values: np.min(values, axis=0),
}


def _activation_name(function):
    for name in _ELEMENTWISE_ACTIVATIONS:
        if getattr(keras.activations, name, None) is function:
            return name
    return None


def _channels_last(layer):
    return getattr(layer, "data_format", "channels_last") in (None, "channels_last")


def _plain(layer):
    """No LoRA, no quantization: the layer's weights are its kernels."""
    return not getattr(layer, "lora_enabled", False) and (
        getattr(layer, "quantization_mode", None) is None
    )


def _is_producer(layer):
    """A Dense, Conv or SeparableConv layer whose output channels `shrink` may
    remove (SeparableConv with `depth_multiplier=1`)."""
    if type(layer) not in DENSE + _CONV + SEPARABLE or not _plain(layer):
        return False
    if type(layer) in _CONV and (not _channels_last(layer) or layer.groups != 1):
        return False
    if type(layer) in SEPARABLE:
        return _channels_last(layer) and layer.depth_multiplier == 1
    return True


def _is_depthwise(layer):
    """A DepthwiseConv layer that maps channel `c` to channel `c` alone."""
    return (
        type(layer) in DEPTHWISE
        and _plain(layer)
        and _channels_last(layer)
        and layer.depth_multiplier == 1
        and _activation_name(layer.activation) is not None
    )


def _kind(layer, inputs, outputs):
    """How `shrink` treats one layer call; `None` for "leave alone"."""
    if not isinstance(layer, keras.layers.Layer) or len(outputs) != 1:
        return None
    if _is_producer(layer):
        return "producer" if len(inputs) == 1 else None
    if type(layer) in MERGES:
        shapes = {tuple(tensor.shape) for tensor in inputs}
        return "merge" if len(shapes) == 1 else None
    if len(inputs) != 1:
        return None
    if _is_depthwise(layer):
        return "depthwise"
    if type(layer) in _PADDING and _channels_last(layer):
        return "padding"
    if type(layer) is keras.layers.BatchNormalization:
        rank = len(inputs[0].shape)
        return "batchnorm" if layer.axis in (-1, rank - 1) else None
    if type(layer) is keras.layers.Activation:
        return "activation" if _activation_name(layer.activation) else None
    if type(layer) in _ACTIVATION_LAYERS:
        return "activation"
    if type(layer) in _CONSTANT_PRESERVING and _channels_last(layer):
        return "preserving"
    if type(layer) is keras.layers.Flatten and _channels_last(layer):
        known = all(dim is not None for dim in inputs[0].shape[1:])
        return "flatten" if known else None
    return None


def _functional(model):
    if isinstance(model, keras.Sequential):
        functional = _keras_compat.sequential_graph(model)
        if functional is None:
            raise ValueError(
                "Invalid value for argument `model`: the Sequential model has no "
                "known input shape. Start it with `keras.Input(shape)`. "
                f"Received: model={model.name!r}"
            )
        return functional
    if isinstance(model, keras.Model) and _keras_compat.is_functional(model):
        return model
    raise TypeError(
        "Invalid value for argument `model`. Expected a Keras 3 Sequential or "
        f"functional model. Received: model={model!r} of type "
        f"{type(model).__name__}"
    )


def _nodes(functional):
    """The layer calls of a functional model, inputs before their consumers."""
    nodes = []
    nodes_by_depth = _keras_compat.nodes_by_depth(functional)
    for depth in sorted(nodes_by_depth, reverse=True):
        for node in nodes_by_depth[depth]:
            if node.operation is not None and not node.is_input:
                nodes.append(node)
    return nodes


def layer_calls(model):
    """The layer calls (nodes) of a Keras 3 Sequential or functional model,
    inputs before their consumers."""
    return _nodes(_functional(model))


class ChannelGraph:
    """Channel groups of a functional model.

    A group is a set of channels that go or stay together: the output channels
    of one or more producers (several when merged by `Add`), followed through
    channel-wise layers. Each tensor belongs to one group; a tensor made by
    `Flatten` holds its group's channels `repeat` times, channel `j` of the
    group at the flat positions `p * size + j`.
    """

    def __init__(self, model):
        functional = _functional(model)
        self.outputs = list(functional.outputs)
        self.nodes = _nodes(functional)
        calls = {}
        for node in self.nodes:
            calls[id(node.operation)] = calls.get(id(node.operation), 0) + 1
        self.parent = []
        self.size = []
        self.fixed = []
        self.tensor = {}  # id(KerasTensor) -> (group, repeat)
        self.kind = []  # per node
        for tensor in functional.inputs:
            self.tensor[id(tensor)] = (self._new_group(tensor, fixed=True), 1)
        for node in self.nodes:
            inputs = list(node.input_tensors)
            outputs = list(node.output_tensors)
            kind = None
            if calls[id(node.operation)] == 1 and all(
                id(tensor) in self.tensor for tensor in inputs
            ):
                kind = _kind(node.operation, inputs, outputs)
            self.kind.append(kind)
            self._add(node.operation, kind, inputs, outputs)
        for tensor in functional.outputs:
            self.fixed[self.group(tensor)] = True

    def _new_group(self, tensor, fixed=False):
        self.parent.append(len(self.parent))
        self.size.append(int(tensor.shape[-1]))
        self.fixed.append(fixed)
        return len(self.parent) - 1

    def find(self, group):
        while self.parent[group] != group:
            self.parent[group] = self.parent[self.parent[group]]
            group = self.parent[group]
        return group

    def group(self, tensor):
        return self.find(self.tensor[id(tensor)][0])

    def repeat(self, tensor):
        return self.tensor[id(tensor)][1]

    def _union(self, first, second):
        first, second = self.find(first), self.find(second)
        if first != second:
            self.parent[second] = first
            self.fixed[first] = self.fixed[first] or self.fixed[second]

    def _add(self, layer, kind, inputs, outputs):
        if kind is None:
            for tensor in inputs:
                if id(tensor) in self.tensor:
                    self.fixed[self.group(tensor)] = True
            for tensor in outputs:
                self.tensor[id(tensor)] = (self._new_group(tensor, fixed=True), 1)
        elif kind == "producer":
            elementwise = _activation_name(layer.activation) is not None
            group = self._new_group(outputs[0], fixed=not elementwise)
            self.tensor[id(outputs[0])] = (group, 1)
        elif kind == "merge":
            layouts = {(self.size[self.group(t)], self.repeat(t)) for t in inputs}
            if len(layouts) != 1:
                self.kind[-1] = None
                self._add(layer, None, inputs, outputs)
                return
            for tensor in inputs[1:]:
                self._union(self.group(inputs[0]), self.group(tensor))
            self.tensor[id(outputs[0])] = self.tensor[id(inputs[0])]
        elif kind == "flatten":
            group, repeat = self.tensor[id(inputs[0])]
            spatial = math.prod(int(dim) for dim in inputs[0].shape[1:-1])
            self.tensor[id(outputs[0])] = (group, repeat * spatial)
        else:
            self.tensor[id(outputs[0])] = self.tensor[id(inputs[0])]
