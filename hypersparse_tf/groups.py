"""Groups of weights that go or stay together: channels, units and blocks.

HyperSparse and the masks work on one vector of magnitudes. With
`structure="weight"` (the paper's) every weight is its own entry. With
`structure="channel"` an entry is a group: one output channel or unit of a
kernel, its magnitude the L2 norm of the group's weights (divided by
`sqrt(group size)` with `normalize=True`, so that wide and narrow layers
compete on the same scale). With `structure="block"` an entry is a 1xB block
of a Dense kernel along its input axis, the shape of TFLite's sparse
FULLY_CONNECTED kernels (B = 4 for float, 16 for int8).

Output channels, per layer:

- `Dense`, `Conv1D/2D/3D`: the last kernel axis (units, filters);
- `Conv1D/2D/3DTranspose`: the kernel's axis -2 (its filters);
- `DepthwiseConv1D/2D` and the depthwise kernel of `SeparableConv1D/2D`: each
  depthwise channel, `in_channels * depth_multiplier` of them; the pointwise
  kernel of a `SeparableConv` groups by its filters, like a 1x1 convolution.

A group is a channel of the network, not of one kernel. In a Keras 3
functional model (found by `channel_graph.ChannelGraph`), channels that meet
in an `Add` (or another merge layer) are ONE group across every kernel that
writes them, so a residual channel can only go from all of its writers at
once; and a depthwise filter (of a `DepthwiseConv` or the depthwise kernel of
a `SeparableConv`, with `depth_multiplier=1`) joins the group of the channel
it filters, with the kernels that write that channel: removing the group
zeroes the channel's writers and its filter together, which is what lets
`shrink` delete it from a depthwise-separable network (zeroing the writers
alone would leave the channel holding BatchNorm's non-zero constant, which a
3x3 depthwise filter with `"same"` padding does not pass on as a constant).

The kernels that write the model's outputs (a classifier's units are its
classes) are left out of channel structure: `attach` leaves them out by
default.

Blocks: a Dense kernel `(in, out)` is cut into `ceil(in / B)` blocks of B
consecutive inputs per unit; when B does not divide `in`, the last block of
each unit is shorter (its size counts in the normalization). Only Dense
kernels take blocks; `attach` with a block-structured regularizer attaches to
the Dense kernels only.
"""

import dataclasses
import math

import keras
import numpy as np

from hypersparse_tf import channel_graph
from hypersparse_tf import prunable
from hypersparse_tf import validation

STRUCTURES = ("weight", "channel", "block")

_TRANSPOSE_NAMES = ("Conv1DTranspose", "Conv2DTranspose", "Conv3DTranspose")
_DEPTHWISE_NAMES = ("DepthwiseConv1D", "DepthwiseConv2D")
_SEPARABLE_NAMES = ("SeparableConv1D", "SeparableConv2D")
_CHANNEL_NAMES = (
    "Dense",
    "Conv1D",
    "Conv2D",
    "Conv3D",
    *_TRANSPOSE_NAMES,
    *_DEPTHWISE_NAMES,
    *_SEPARABLE_NAMES,
)


def check_structure(structure, block_shape):
    """Returns `(structure, block_shape)` after checking them; `block_shape`
    is a tuple `(1, B)` for blocks, else None."""
    validation.check_choice(structure, "structure", STRUCTURES)
    if structure != "block":
        if block_shape is not None:
            raise ValueError(
                validation.invalid(
                    "block_shape", "None unless structure='block'", block_shape
                )
            )
        return structure, None
    if block_shape is None:
        block_shape = (1, 4)
    if (
        not isinstance(block_shape, (tuple, list))
        or len(block_shape) != 2
        or block_shape[0] != 1
        or not validation.is_int(block_shape[1])
        or block_shape[1] < 2
    ):
        raise ValueError(
            validation.invalid(
                "block_shape",
                "(1, B) with an int B >= 2: 1xB blocks along a Dense kernel's "
                "input axis, e.g. (1, 4) for float or (1, 16) for int8 TFLite",
                block_shape,
            )
        )
    return structure, (1, int(block_shape[1]))


@dataclasses.dataclass
class KernelGroups:
    """How one kernel's weights fall into groups.

    `perm` and `columns` turn the kernel into a matrix whose columns are its
    channels (`transpose(kernel, perm).reshape(-1, columns)`); for blocks,
    `block` is B and the kernel is `(in, out)`. `ids` maps each local group
    (channel, or block row-major `(in_block, unit)`) to its global group.
    """

    key: str
    shape: tuple
    perm: tuple
    columns: int
    block: int
    ids: np.ndarray
    sizes: np.ndarray

    def local_sums_of_squares(self, values, ops):
        """Sum of squares of each local group, with `ops` (`numpy` or
        `keras.ops`)."""
        squares = ops.square(values)
        if self.block:
            rows, units = self.shape
            padding = -rows % self.block
            if padding:
                squares = ops.pad(squares, [[0, padding], [0, 0]])
            squares = ops.reshape(squares, (-1, self.block, units))
            return ops.reshape(ops.sum(squares, axis=1), (-1,))
        squares = ops.transpose(squares, self.perm)
        return ops.sum(ops.reshape(squares, (-1, self.columns)), axis=0)

    def expand(self, keep_local):
        """A bool array of the kernel's shape from one bool per local group."""
        keep_local = np.asarray(keep_local, bool)
        if self.block:
            rows, units = self.shape
            grid = keep_local.reshape(-1, units)
            return np.repeat(grid, self.block, axis=0)[:rows]
        permuted = tuple(self.shape[i] for i in self.perm)
        rows = math.prod(permuted) // self.columns
        flat = np.broadcast_to(keep_local, (rows, self.columns))
        return np.transpose(flat.reshape(permuted), np.argsort(self.perm))


def _type_name(layer):
    return type(layer).__name__


def _channel_layout(layer, weight):
    """`(perm, columns)` of a kernel's output channels, or None."""
    name = _type_name(layer)
    shape = tuple(int(d) for d in weight.shape)
    rank = len(shape)
    identity = tuple(range(rank))
    if name not in _CHANNEL_NAMES or rank < 2:
        return None
    weight_name = prunable.weight_name(weight)
    if name in _TRANSPOSE_NAMES:
        return (*range(rank - 2), rank - 1, rank - 2), shape[-2]
    if name in _DEPTHWISE_NAMES or weight_name == "depthwise_kernel":
        return identity, shape[-2] * shape[-1]
    return identity, shape[-1]


def _graph(model):
    """The `ChannelGraph` of a Keras 3 functional model, else None."""
    try:
        return channel_graph.ChannelGraph(model)
    except (TypeError, ValueError):
        return None


def _output_layers(model, graph):
    """The layers whose output is one of the model's outputs."""
    if graph is None:
        last = getattr(model, "layers", None)
        return {id(last[-1])} if last else set()
    outputs = {id(t) for t in graph.outputs}
    return {
        id(node.operation)
        for node in graph.nodes
        if any(id(t) in outputs for t in node.output_tensors)
    }


def default_predicate(model, structure):
    """The kernels a `structure` regularizer is attached to by default."""
    if structure == "weight":
        return prunable.is_prunable_kernel
    if structure == "block":
        return lambda layer, weight: (
            prunable.is_prunable_kernel(layer, weight)
            and _type_name(layer) == "Dense"
            and len(weight.shape) == 2
        )
    outputs = _output_layers(model, _graph(model))
    return lambda layer, weight: (
        prunable.is_prunable_kernel(layer, weight)
        and id(layer) not in outputs
        and _channel_layout(layer, weight) is not None
    )


def _merged_roots(graph):
    """`{(id(layer), side): channel-graph group}`, for the kernels whose
    channels can merge with others' (Keras 3 functional models only): side
    `"out"` for the output channels of a producer, `"in"` for the depthwise
    kernel of a DepthwiseConv or SeparableConv, which filters the channels of
    its input (one group with the kernels that write them)."""
    if graph is None:
        return {}
    roots = {}
    for node, kind in zip(graph.nodes, graph.kind, strict=True):
        layer = node.operation
        if kind == "producer":
            roots[(id(layer), "out")] = graph.group(node.output_tensors[0])
            if type(layer) in channel_graph.SEPARABLE:
                roots[(id(layer), "in")] = graph.group(node.input_tensors[0])
        elif kind == "depthwise":
            roots[(id(layer), "in")] = graph.group(node.input_tensors[0])
    return roots


def _root(roots, layer, weight):
    depthwise = _type_name(layer) in _DEPTHWISE_NAMES or (
        prunable.weight_name(weight) == "depthwise_kernel"
    )
    return roots.get((id(layer), "in" if depthwise else "out"))


class Grouping:
    """The groups of the kernels one structured regularizer is attached to.

    Args:
        kernels: List of `KernelGroups`, in the order of the kernels.
        num_groups: Int. `G`, the number of groups over all kernels.
        normalize: Bool. Whether a group's magnitude is divided by the
            square root of its size.
    """

    def __init__(self, kernels, num_groups, normalize):
        self.kernels = kernels
        self.num_groups = int(num_groups)
        self.normalize = bool(normalize)
        # Biases and BatchNorm parameters of the grouped channels: see
        # `companion_masks`. Set by `build_grouping`.
        self.companions = []
        sizes = np.zeros(self.num_groups, np.int64)
        for kernel in kernels:
            np.add.at(sizes, kernel.ids, kernel.sizes)
        self.sizes = sizes
        # The kernels each group touches: min_groups keeps one per set.
        self.owner = np.full(self.num_groups, -1, np.int64)
        for index, kernel in enumerate(kernels):
            self.owner[kernel.ids] = index

    def group_sums_of_squares(self, values, ops=np):
        """Sum of squares per group over all kernels (`values` in kernel
        order)."""
        parts = [
            k.local_sums_of_squares(v, ops)
            for k, v in zip(self.kernels, values, strict=True)
        ]
        if ops is np:
            total = np.zeros(self.num_groups, np.float64)
            for kernel, part in zip(self.kernels, parts, strict=True):
                np.add.at(total, kernel.ids, part)
            return total
        ids = np.concatenate([k.ids for k in self.kernels]).astype("int32")
        return keras.ops.segment_sum(
            keras.ops.concatenate(parts, axis=0), ids, num_segments=self.num_groups
        )

    def magnitudes(self, sums_of_squares, ops=np):
        """Group magnitudes from sums of squares: L2 norms (RMS if
        normalized)."""
        divisor = self.sizes.astype("float64") if self.normalize else 1.0
        if ops is np:
            return np.sqrt(np.asarray(sums_of_squares, np.float64) / divisor)
        return ops.sqrt(sums_of_squares / ops.cast(divisor, "float32"))

    def element_masks(self, keep):
        """`[bool array]` per kernel from one keep flag per group."""
        keep = np.asarray(keep, bool)
        return [kernel.expand(keep[kernel.ids]) for kernel in self.kernels]


def build_grouping(model, entries, structure, block_shape=None, normalize=True):
    """The `Grouping` of the kernels in `entries` for `structure`.

    Args:
        model: The model that owns the kernels.
        entries: List of `(key, layer, weight)`, as
            `prunable.prunable_layers_and_weights` gives.
        structure: `"channel"` or `"block"`.
        block_shape: `(1, B)` for blocks.
        normalize: Bool. See `Grouping`.

    Raises:
        ValueError: naming a kernel the structure cannot group.
    """
    structure, block_shape = check_structure(structure, block_shape)
    if structure == "weight":
        raise ValueError("structure='weight' needs no grouping")
    roots, outputs, graph = {}, set(), None
    if structure == "channel":
        graph = _graph(model)
        roots, outputs = _merged_roots(graph), _output_layers(model, graph)
    kernels, merged, next_id = [], {}, 0
    for key, layer, weight in entries:
        shape = tuple(int(d) for d in weight.shape)
        if structure == "block":
            if _type_name(layer) != "Dense" or len(shape) != 2:
                raise ValueError(
                    f"structure='block' groups Dense kernels in 1xB blocks; "
                    f"{key!r} of a {_type_name(layer)} layer cannot take them. "
                    "Attach with the default predicate (Dense kernels only)."
                )
            block = block_shape[1]
            rows, units = shape
            row_blocks = -(-rows // block)
            sizes = np.full((row_blocks, units), block, np.int64)
            sizes[-1, :] = rows - block * (row_blocks - 1)
            count = row_blocks * units
            ids = np.arange(next_id, next_id + count, dtype=np.int64)
            next_id += count
            kernels.append(
                KernelGroups(key, shape, (0, 1), units, block, ids, sizes.ravel())
            )
            continue
        layout = _channel_layout(layer, weight)
        if layout is None:
            raise ValueError(
                f"structure='channel' groups the output channels of Dense, Conv, "
                f"ConvTranspose, DepthwiseConv and SeparableConv kernels; "
                f"{key!r} of a {_type_name(layer)} layer has none."
            )
        if id(layer) in outputs:
            raise ValueError(
                f"structure='channel' would remove units of {key!r}, whose "
                "layer writes the model's outputs (a classifier's units are "
                "its classes). Leave it out (attach's default predicate does)."
            )
        perm, columns = layout
        per_channel = math.prod(shape) // columns
        root = _root(roots, layer, weight)
        if root is None:
            ids = np.arange(next_id, next_id + columns, dtype=np.int64)
            next_id += columns
        else:  # merged with the other writers of these channels
            if root not in merged:
                merged[root] = np.arange(next_id, next_id + columns, dtype=np.int64)
                next_id += columns
            ids = merged[root]
            if len(ids) != columns:  # pragma: no cover - the graph merges equals
                raise ValueError(f"{key!r}: merged channels of another width")
        sizes = np.full(columns, per_channel, np.int64)
        kernels.append(KernelGroups(key, shape, perm, columns, 0, ids, sizes))
    if structure == "block" and kernels and all(k.shape[0] < k.block for k in kernels):
        raise ValueError(
            validation.invalid(
                "block_shape",
                "1xB blocks that fit the input axis of at least one attached "
                f"Dense kernel (inputs: {sorted({k.shape[0] for k in kernels})})",
                block_shape,
            )
        )
    if not kernels:
        raise ValueError(
            f"structure={structure!r}: no kernel to group. "
            + (
                "A block structure needs Dense kernels."
                if structure == "block"
                else "A channel structure needs Dense or Conv kernels whose "
                "units are not the model's outputs."
            )
        )
    grouping = Grouping(kernels, next_id, normalize)
    if graph is not None:
        attached = {id(weight) for _, _, weight in entries}
        grouping.companions = _companions(graph, merged, attached)
    return grouping


# The weights of a channel besides its kernels: zeroed with its group, they
# leave the channel exactly 0 (BatchNorm's beta would otherwise hold a
# constant there, which a "same"-padded 3x3 convolution reads differently at
# the border, so `shrink` could not delete the channel).
COMPANION_NAMES = ("bias", "gamma", "beta")


def _companions(graph, merged, attached):
    """`[(key, variable, ids)]`: the biases of the layers that write or filter
    a grouped channel and the BatchNorm gamma/beta that normalize it, with the
    global group of each of their entries. A channel counts only where every
    kernel that writes or filters it is attached."""
    complete = {}
    for node, kind in zip(graph.nodes, graph.kind, strict=True):
        layer = node.operation
        if kind not in ("producer", "depthwise"):
            continue
        tensor = node.output_tensors[0] if kind == "producer" else node.input_tensors[0]
        written = [
            w
            for w in layer.weights
            if prunable.weight_name(w) in ("kernel", "pointwise_kernel")
        ]
        if type(layer) in channel_graph.SEPARABLE:
            inner = graph.group(node.input_tensors[0])
            depthwise = [
                w
                for w in layer.weights
                if prunable.weight_name(w) == "depthwise_kernel"
            ]
            complete[inner] = complete.get(inner, True) and all(
                id(w) in attached for w in depthwise
            )
        root = graph.group(tensor)
        complete[root] = complete.get(root, True) and all(
            id(w) in attached for w in written
        )
    found = []
    for node, kind in zip(graph.nodes, graph.kind, strict=True):
        if kind not in ("producer", "depthwise", "batchnorm"):
            continue
        output = node.output_tensors[0]
        root = graph.group(output)
        if not complete.get(root) or root not in merged or graph.repeat(output) != 1:
            continue
        layer = node.operation
        for weight in layer.weights:
            if prunable.weight_name(weight) in COMPANION_NAMES and len(
                merged[root]
            ) == int(weight.shape[-1]):
                key = prunable.weight_key(layer, weight)
                found.append((key, weight, merged[root]))
    return found


def companion_masks(grouping, kernel_masks):
    """`{key: bool array}` for the companions of a channel grouping (biases,
    BatchNorm gamma and beta): False where every weight of the channel's
    group is masked, so that the removed channel is exactly 0."""
    kept = np.zeros(grouping.num_groups, bool)
    for kernel, mask in zip(grouping.kernels, kernel_masks, strict=True):
        local = kernel.local_sums_of_squares(np.asarray(mask, np.float64), np)
        np.logical_or.at(kept, kernel.ids, local > 0)
    return {key: kept[ids] for key, _, ids in grouping.companions}


def companion_weights(grouping):
    """`{key: variable}` of a grouping's companions (see `companion_masks`)."""
    return {key: weight for key, weight, _ in grouping.companions}


def structured_loss(kernel, x, group_sums_of_squares, grouping, weight, scale):
    """One kernel's share of the HyperSparse loss on group magnitudes.

    `sum(tanh(scale * g))` over the kernel's groups, where a group's magnitude
    `g` adds the kernel's own squares (with their gradient) to those of the
    other kernels of a merged group (held constant, from the last refresh of
    `group_sums_of_squares`): the gradient reaching each weight is exactly the
    HyperSparse gradient through the group's norm,
    `scale * sech^2(scale * g) * w / (g * n)` (`n` = 1, or the group size when
    normalized). A group whose norm is exactly 0 gets a zero gradient. (A
    merged group is counted once in each of its kernels' values; the gradient
    is not affected.)

    Args:
        kernel: The kernel's `KernelGroups`.
        x: The kernel (a variable or tensor).
        group_sums_of_squares: Float32 vector `(G,)`, refreshed statistics.
        grouping: The `Grouping`.
        weight: Scalar: `coefficient * A / T`, held constant.
        scale: Scalar: `s`, held constant.
    """
    ops = keras.ops
    x = ops.convert_to_tensor(x)
    ids = kernel.ids.astype("int32")
    local = kernel.local_sums_of_squares(x, ops)
    total = ops.take(group_sums_of_squares, ids)
    others = ops.stop_gradient(ops.maximum(total - ops.stop_gradient(local), 0.0))
    squared = local + ops.cast(others, x.dtype)
    if grouping.normalize:
        squared = squared / ops.cast(grouping.sizes[kernel.ids], x.dtype)
    positive = squared > 0
    norm = ops.where(positive, ops.sqrt(ops.where(positive, squared, 1.0)), 0.0)
    scale = ops.stop_gradient(ops.cast(scale, x.dtype))
    return ops.stop_gradient(ops.cast(weight, x.dtype)) * ops.sum(
        ops.tanh(scale * norm)
    )


def structured_masks(values, grouping, prune_rate, min_groups=1):
    """Masks that remove whole groups by magnitude.

    Exactly `floor(prune_rate * G)` of the `G` groups are removed, the
    smallest magnitudes first (ties in group order), except that every kernel
    keeps at least `min_groups` of its groups (a global threshold could empty
    a narrow layer): a group whose removal would break that stays and the next
    smallest goes instead, so the count is exact whenever the kernels have
    groups to spare.

    Args:
        values: List of arrays, the kernels in the grouping's order.
        grouping: The `Grouping`.
        prune_rate: Float in (0, 1). Fraction of the groups to remove.
        min_groups: Int >= 0. Groups each kernel keeps. Defaults to `1`.

    Returns:
        List of bool arrays (True = kept), one per kernel.
    """
    prune_rate = prunable.check_prune_rate(prune_rate)
    min_groups = validation.check_int(min_groups, "min_groups", 0)
    magnitudes = grouping.magnitudes(grouping.group_sums_of_squares(values))
    count = prunable.num_pruned(prune_rate, grouping.num_groups)
    touching = [[] for _ in range(grouping.num_groups)]
    kept_per_kernel = []
    for index, kernel in enumerate(grouping.kernels):
        unique = np.unique(kernel.ids)
        kept_per_kernel.append(len(unique))
        for group in unique:
            touching[group].append(index)
    keep = np.ones(grouping.num_groups, bool)
    removed = 0
    for group in np.argsort(magnitudes, kind="stable"):
        if removed == count:
            break
        if any(kept_per_kernel[k] <= min_groups for k in touching[group]):
            continue
        keep[group] = False
        removed += 1
        for k in touching[group]:
            kept_per_kernel[k] -= 1
    return grouping.element_masks(keep)
