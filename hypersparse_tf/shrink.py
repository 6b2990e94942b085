"""Removing the units and channels of a model that carry nothing.

TFLite Micro has no sparse kernels: a 99%-sparse model runs as slowly and needs
as much memory on a board as the dense one, unless whole units and channels go.
`shrink` finds the units of `Dense` layers and the channels of convolutions that
can go without changing the model's outputs, and builds the smaller dense model.

A channel is removed where every layer that reads it either ignores it (its
weights for that channel are all zero) or sees a constant there that it can
absorb: a channel whose incoming weights are all zero carries the constant
`activation(bias)`, passed on through BatchNorm, activations and pooling. A
constant 0 is dropped everywhere; another constant is folded into the bias of a
`Dense` layer, or of a convolution with `padding="valid"` (with `"same"`
padding, the border outputs would change, so the channel stays).

Channels are tracked through `Dense`, `Conv1D/2D/3D`, `SeparableConv1D/2D`,
`DepthwiseConv1D/2D` (with `depth_multiplier=1`: channel `c` in, channel `c`
out, removed with its filter), `BatchNormalization`, element-wise activations,
dropout and noise layers, pooling, cropping, upsampling, zero padding (which
passes a constant 0 on), `Flatten` and the merge layers `Add`, `Subtract`,
`Average`, `Maximum`, `Minimum` (residual connections: the channels of all
merged tensors go or stay together). A constant folds into a 1x1 convolution
whatever its padding. The channels next to any other layer, and those of the
model's inputs and outputs, stay: what `shrink` does not understand, it leaves
alone.

Channel masks (`global_magnitude_masks(structure="channel")`, ART with a
channel-structured HyperSparse) also zero the removed channels' biases and
BatchNorm gamma and beta, so that those channels are exactly 0 and all go.
"""

import keras
import numpy as np

from hypersparse_tf import channel_graph
from hypersparse_tf import prunable
from hypersparse_tf import validation

# Config keys dropped from every layer of the shrunk model: it is made for
# inference and export, and a kernel constraint such as a fixed mask would no
# longer fit the smaller kernel.
_TRAINING_ONLY_KEYS = (
    "kernel_regularizer",
    "bias_regularizer",
    "activity_regularizer",
    "kernel_constraint",
    "bias_constraint",
    "beta_regularizer",
    "gamma_regularizer",
    "beta_constraint",
    "gamma_constraint",
)


def _weights(layer):
    return {prunable.weight_name(w): np.array(w.numpy()) for w in layer.weights}


def _rows_zero(kernel):
    """Per input channel (axis -2 of a kernel): whether all its weights are 0."""
    axes = tuple(i for i in range(kernel.ndim) if i != kernel.ndim - 2)
    return ~np.any(kernel != 0, axis=axes)


def _window_sums(kernel):
    """Per input channel: its weights summed over the kernel's window,
    `(in_channels, out_channels)`."""
    return kernel.reshape(-1, kernel.shape[-2], kernel.shape[-1]).sum(axis=0)


def _one_by_one(layer):
    """Whether every kernel window of a convolution is a single position."""
    return all(int(size) == 1 for size in layer.kernel_size)


def _can_fold(layer):
    """Whether a constant input channel of `layer` folds exactly into its bias
    (a Dense layer, or a convolution that never reads padding)."""
    if type(layer) in channel_graph.DENSE:
        return True
    return layer.padding == "valid" or _one_by_one(layer)


def _input_ignored(layer, weights):
    """Per input channel of a producer: whether the layer ignores it."""
    if type(layer) in channel_graph.SEPARABLE:
        return _rows_zero(weights["depthwise_kernel"]) | _rows_zero(
            weights["pointwise_kernel"]
        )
    return _rows_zero(weights["kernel"])


def _input_sums(layer, weights):
    """Per input channel of a producer: what a constant 1 on it adds to each
    output (`(in_channels, out_channels)`), away from any padding."""
    if type(layer) in channel_graph.SEPARABLE:
        depthwise = _window_sums(weights["depthwise_kernel"])  # (in, 1)
        pointwise = weights["pointwise_kernel"]
        return depthwise * pointwise.reshape(pointwise.shape[-2:])
    return _window_sums(weights["kernel"])


def _output_kernel(layer, weights):
    """The kernel whose last axis is a producer's output channels."""
    if type(layer) in channel_graph.SEPARABLE:
        return weights["pointwise_kernel"]
    return weights["kernel"]


def _compress_inputs(layer, weights, keep):
    names = ("depthwise_kernel", "pointwise_kernel")
    if type(layer) not in channel_graph.SEPARABLE:
        names = ("kernel",)
    for name in names:
        weights[name] = np.compress(keep, weights[name], axis=-2)


def _compress_outputs(layer, weights, keep, kind):
    for name, value in weights.items():
        if kind == "depthwise" and name == "kernel":
            axis = -2  # (*window, channels, 1)
        elif name == "depthwise_kernel":
            continue  # a SeparableConv's input side
        else:
            axis = -1
        weights[name] = np.compress(keep, value, axis=axis)


_WEIGHTED = ("producer", "batchnorm", "depthwise")


def _activate(layer, value):
    return keras.ops.convert_to_numpy(layer.activation(value[None]))[0]


class _Shrinker:
    def __init__(self, model):
        self.graph = channel_graph.ChannelGraph(model)
        self.state = {}  # layer name -> {weight name: array}
        self.units = {}  # layer name -> new number of output channels
        self.use_bias = {}  # layer name -> True where a bias had to be added
        for node, kind in zip(self.graph.nodes, self.graph.kind, strict=True):
            if kind in _WEIGHTED:
                self.state[node.operation.name] = _weights(node.operation)

    def _bias(self, layer):
        weights = self.state[layer.name]
        if "bias" not in weights:
            width = _output_kernel(layer, weights).shape[-1]
            weights["bias"] = np.zeros(width, np.float32)
            self.use_bias[layer.name] = True
        return weights["bias"]

    def constants(self):
        """Per tensor: (is constant, value) for each of its flat channels."""
        constant = {}
        graph = self.graph
        for node, kind in zip(graph.nodes, graph.kind, strict=True):
            layer = node.operation
            inputs = list(node.input_tensors)
            if kind is None:
                continue
            output = node.output_tensors[0]
            if kind == "producer":
                weights = self.state[layer.name]
                kernel = _output_kernel(layer, weights)
                dead = ~np.any(kernel.reshape(-1, kernel.shape[-1]) != 0, axis=0)
                bias = weights.get("bias", np.zeros(kernel.shape[-1], np.float32))
                constant[id(output)] = (dead, _activate(layer, bias))
                continue
            if kind == "depthwise":
                constant[id(output)] = self._depthwise(
                    layer, constant.get(id(inputs[0]))
                )
                continue
            known = [constant.get(id(tensor)) for tensor in inputs]
            if any(item is None for item in known):
                continue
            masks = [mask for mask, _ in known]
            values = [value for _, value in known]
            if kind == "merge":
                mask = np.logical_and.reduce(masks)
                value = channel_graph.MERGES[type(layer)](np.stack(values))
            elif kind == "flatten":
                spatial = graph.repeat(output) // graph.repeat(inputs[0])
                mask, value = np.tile(masks[0], spatial), np.tile(values[0], spatial)
            elif kind == "batchnorm":
                mask, value = masks[0], self._batchnorm(layer, values[0])
            elif kind == "padding":  # the border is 0
                mask, value = masks[0] & (values[0] == 0), values[0]
            elif kind == "activation":
                mask = masks[0]
                value = keras.ops.convert_to_numpy(layer(values[0][None]))[0]
            else:
                mask, value = masks[0], values[0]
            constant[id(output)] = (mask, np.asarray(value, np.float32))
        return constant

    def _depthwise(self, layer, known):
        """(is constant, value) per output channel of a depthwise layer: a
        channel whose kernel is 0 holds `activation(bias)`; a constant input
        `v` gives `activation(v * sum(kernel) + bias)` where no padding is
        read, or where `v` is 0."""
        weights = self.state[layer.name]
        kernel = weights["kernel"]
        sums = _window_sums(kernel)[:, 0]
        dead = _rows_zero(kernel)
        pre = weights.get("bias", np.zeros(len(sums), np.float32)).copy()
        mask = dead
        if known is not None:
            constant_in, value_in = known
            exact = constant_in & (
                (layer.padding == "valid") | _one_by_one(layer) | (value_in == 0)
            )
            pre = pre + np.where(exact, value_in * sums, 0.0)
            mask = dead | exact
        return mask, _activate(layer, pre.astype(np.float32))

    def _batchnorm(self, layer, value):
        weights = self.state[layer.name]
        scale = weights.get("gamma", 1.0) / np.sqrt(
            weights["moving_variance"] + layer.epsilon
        )
        return (value - weights["moving_mean"]) * scale + weights.get("beta", 0.0)

    def _edges(self):
        """(tensor, consuming producer layer) for every read of a channel."""
        for node, kind in zip(self.graph.nodes, self.graph.kind, strict=True):
            if kind == "producer":
                yield node.input_tensors[0], node.operation

    def removable(self, constant):
        """Per free group: a bool array, True for channels that can go."""
        graph = self.graph
        result = {}
        for tensor, layer in self._edges():
            group = graph.group(tensor)
            if graph.fixed[group]:
                continue
            size, repeat = graph.size[group], graph.repeat(tensor)
            ok = _input_ignored(layer, self.state[layer.name])
            if id(tensor) in constant:
                mask, value = constant[id(tensor)]
                foldable = _can_fold(layer) | (value == 0)
                ok = ok | (mask & foldable)
            ok = np.all(ok.reshape(repeat, size), axis=0)
            result[group] = result.get(group, True) & ok
        for ok in result.values():
            if ok.all():  # A layer needs at least one unit: keep the first.
                ok[0] = False
        return {group: ok for group, ok in result.items() if ok.any()}

    def remove(self, removable, constant):
        graph = self.graph
        for tensor, layer in self._edges():
            group = graph.group(tensor)
            if group not in removable:
                continue
            gone = np.tile(removable[group], graph.repeat(tensor))
            weights = self.state[layer.name]
            if id(tensor) in constant:
                mask, value = constant[id(tensor)]
                ignored = _input_ignored(layer, weights)
                fold = gone & mask & (value != 0) & ~ignored
                if fold.any():
                    sums = _input_sums(layer, weights)[fold]
                    self._bias(layer)[...] += value[fold] @ sums
            _compress_inputs(layer, weights, ~gone)
        for node, kind in zip(graph.nodes, graph.kind, strict=True):
            if kind not in _WEIGHTED:
                continue
            output = node.output_tensors[0]
            group = graph.group(output)
            if group not in removable:
                continue
            keep = ~np.tile(removable[group], graph.repeat(output))
            weights = self.state[node.operation.name]
            _compress_outputs(node.operation, weights, keep, kind)
            if kind == "producer":
                self.units[node.operation.name] = int(keep.sum())
        for group, gone in removable.items():
            graph.size[group] -= int(gone.sum())

    def run(self):
        while True:
            constant = self.constants()
            removable = self.removable(constant)
            if not removable:
                return
            self.remove(removable, constant)


def _clone_function(shrinker):
    def clone(layer):
        config = layer.get_config()
        for key in _TRAINING_ONLY_KEYS:
            if key in config:
                config[key] = None
        if layer.name in shrinker.units:
            key = "units" if type(layer) in channel_graph.DENSE else "filters"
            config[key] = shrinker.units[layer.name]
        if shrinker.use_bias.get(layer.name):
            config["use_bias"] = True
        return layer.__class__.from_config(config)

    return clone


def _probe_inputs(model, verify_inputs, seed):
    rng = np.random.default_rng(seed)
    probes = []
    for tensor in model.inputs:
        shape = [4] + [8 if dim is None else int(dim) for dim in tensor.shape[1:]]
        probes.append(rng.standard_normal(shape).astype(tensor.dtype))
    batches = [probes]
    if verify_inputs is not None:
        given = (
            verify_inputs
            if isinstance(verify_inputs, list | tuple)
            else [verify_inputs]
        )
        batches.append([np.asarray(x) for x in given])
    return batches


def _outputs(model, inputs):
    outputs = model(inputs if len(inputs) > 1 else inputs[0], training=False)
    return [keras.ops.convert_to_numpy(y) for y in keras.tree.flatten(outputs)]


def shrink(model, verify_inputs=None, atol=1e-5):
    """Returns a smaller dense copy of `model` with the same outputs.

    Removes the units of `Dense` layers and the channels of `Conv1D/2D/3D`
    layers that carry nothing: those whose every reader ignores them (all
    outgoing weights zero), and those whose incoming weights are all zero, so
    that they hold a constant: 0 after the activation (then they simply go), or
    another value that a following `Dense` or `padding="valid"` convolution
    absorbs into its bias. The matching BatchNorm parameters and the input rows
    of the next layers go with them; removals repeat until nothing more goes.
    Channels next to layers `shrink` does not know, and the model's inputs and
    outputs, stay. Where a removal would not be exact, the channel stays.

    Pruning leaves such channels behind at high sparsity; removing them is what
    makes sparsity pay on a microcontroller, where TFLite Micro runs dense
    kernels only. The new model is for inference and export: kernel and bias
    regularizers and constraints (e.g. masks) are not carried over. The input
    model is not changed.

    Args:
        model: A built Keras 3 `Sequential` or functional model.
        verify_inputs: Optional array (or list of arrays, one per model input)
            of real inputs on which the outputs of the new model are compared
            with the old one's, in addition to random inputs. Defaults to
            `None`.
        atol: Float > 0. Largest accepted difference between the outputs of
            the two models, relative to the output scale:
            `max|new - old| <= atol * max(1, max|old|)`. Defaults to `1e-5`.

    Returns:
        A new `keras.Model` of the same kind (Sequential or functional).

    Raises:
        TypeError: if `model` is not a Sequential or functional Keras 3 model.
        ValueError: if the model's outputs hold NaN or inf.
        RuntimeError: if the outputs of the new model differ by more than
            `atol` (a bug: please report it).

    Example:

    >>> hypersparse_tf.apply_masks(model, hypersparse_tf.global_magnitude_masks(
    ...     model, 0.99))
    >>> small = hypersparse_tf.shrink(model)
    >>> small.count_params() < model.count_params()
    True
    """
    prunable.check_model(model)
    atol = validation.check_float(atol, "atol", 0, exclusive_minimum=True)
    shrinker = _Shrinker(model)
    shrinker.run()
    new_model = keras.models.clone_model(
        model, clone_function=_clone_function(shrinker)
    )
    for layer in model.layers:
        if not layer.weights:
            continue
        new_layer = new_model.get_layer(layer.name)
        if layer.name in shrinker.state:
            weights = shrinker.state[layer.name]
            for variable in new_layer.weights:
                variable.assign(weights[prunable.weight_name(variable)])
        else:
            new_layer.set_weights(layer.get_weights())
    for inputs in _probe_inputs(model, verify_inputs, seed=0):
        old_outputs = _outputs(model, inputs)
        if not all(np.isfinite(old).all() for old in old_outputs):
            raise ValueError(
                f"Invalid value for argument `model`: {model.name!r} gives NaN "
                "or inf outputs (do its weights hold NaN or inf? did training "
                "diverge?), so `shrink` cannot check the smaller model."
            )
        for old, new in zip(old_outputs, _outputs(new_model, inputs), strict=True):
            error = float(np.max(np.abs(new - old))) if old.size else 0.0
            limit = atol * max(1.0, float(np.max(np.abs(old))) if old.size else 0.0)
            if not error <= limit:
                raise RuntimeError(
                    f"shrink({model.name!r}) changed the model's outputs by "
                    f"{error:.3g} (> {limit:.3g}). This is a bug in "
                    "hypersparse_tf.shrink: please report it with the model."
                )
    return new_model
