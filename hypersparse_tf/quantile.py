"""Exact order statistics of weight magnitudes, in-graph and without a sort.

The HyperSparse threshold is the `k`-th smallest magnitude (0-based) over every
prunable kernel of a network, recomputed at every training step. A full sort of
1.9M floats costs ~0.3 s on a CPU; this module selects the exact value with a
two-pass radix selection on the IEEE-754 bit patterns instead: ~10 ms for the
same 1.9M floats in one tensor on 2 CPU cores, about twice that when they come
as a list of 34 kernels (`benchmarks/results/regularizer_overhead.md`).

For non-negative float32 values, the bit pattern read as an int32 is ordered like
the value itself. The first pass histograms the high 16 bits of every magnitude,
which locates the bucket holding rank `k`; the second pass histograms the low 16
bits of the magnitudes inside that bucket only. Both passes are exact, so the
result equals `sort(|w|)[k]` bit for bit, ties and zeros included.

Under PyTorch, whose steps run eagerly, the same passes run in its own ops
(`torch.bincount`): ~3 ms for 1.9M floats on 2 CPU cores, against ~45 ms for
the passes written in `keras.ops` (whose `segment_sum` PyTorch runs slowly)
and ~14 ms for `torch.kthvalue`.
"""

import keras

_HIGH_BUCKETS = 1 << 15  # sign bit is 0 for magnitudes, so 15 high bits remain
_LOW_BUCKETS = 1 << 16


def _bitcast(x, dtype):
    """The bits of a float32 (int32) tensor read as int32 (float32), on the
    running Keras backend."""
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        return tf.bitcast(x, dtype)
    if backend == "jax":
        import jax

        return jax.lax.bitcast_convert_type(x, dtype)
    if backend == "torch":
        import torch

        return x.view(getattr(torch, dtype))
    return keras.ops.convert_to_tensor(
        keras.ops.convert_to_numpy(x).view(dtype)
    )  # numpy


def _kth_smallest_any_backend(tensors, k):
    """The radix selection of `kth_smallest_magnitude` in `keras.ops`, with a
    fixed number of buckets per pass (jittable: no data-dependent shape)."""
    ops = keras.ops
    bits = [
        _bitcast(ops.abs(ops.reshape(ops.cast(t, "float32"), (-1,))), "int32")
        for t in tensors
    ]
    high = [ops.right_shift(b, 16) for b in bits]
    high_counts = sum(
        ops.segment_sum(ops.ones_like(h), h, num_segments=_HIGH_BUCKETS) for h in high
    )
    high_cumulative = ops.cumsum(high_counts)
    high_bucket = ops.cast(ops.argmax(ops.cast(high_cumulative > k, "int32")), "int32")
    below = ops.take(high_cumulative - high_counts, high_bucket)
    low_counts = sum(
        ops.segment_sum(
            ops.cast(ops.equal(h, high_bucket), "int32"),
            ops.bitwise_and(b, 0xFFFF),
            num_segments=_LOW_BUCKETS,
        )
        for b, h in zip(bits, high, strict=True)
    )
    low_bucket = ops.cast(
        ops.argmax(ops.cast(ops.cumsum(low_counts) + below > k, "int32")), "int32"
    )
    pattern = ops.bitwise_or(ops.left_shift(high_bucket, 16), low_bucket)
    return _bitcast(pattern, "float32")


def _kth_smallest_torch(tensors, k):
    """The two radix passes in PyTorch's own ops (`torch.bincount`, a masked
    second pass), as under TensorFlow; on CPU or GPU tensors alike."""
    import torch

    with torch.no_grad():
        bits = torch.cat(
            [torch.abs(t.reshape(-1).to(torch.float32)) for t in tensors]
        ).view(torch.int32)
        k = torch.as_tensor(int(k), device=bits.device)
        high = torch.bitwise_right_shift(bits, 16)
        high_counts = torch.bincount(high, minlength=_HIGH_BUCKETS)
        high_cumulative = torch.cumsum(high_counts, 0)
        high_bucket = torch.searchsorted(high_cumulative, k, right=True)
        below = high_cumulative[high_bucket] - high_counts[high_bucket]
        low_counts = torch.bincount(
            torch.bitwise_and(bits[high == high_bucket], 0xFFFF),
            minlength=_LOW_BUCKETS,
        )
        low_bucket = torch.searchsorted(
            torch.cumsum(low_counts, 0) + below, k, right=True
        )
        pattern = torch.bitwise_or(
            torch.bitwise_left_shift(high_bucket, 16), low_bucket
        )
        return pattern.to(torch.int32).view(torch.float32)


def _first_index_above(cumulative, k):
    """Index of the first bucket whose cumulative count exceeds `k`."""
    import tensorflow as tf

    return tf.argmax(tf.cast(cumulative > k, tf.int32), output_type=tf.int32)


def kth_smallest_magnitude(tensors, k):
    """Returns the `k`-th smallest absolute value (0-based) over `tensors`.

    Equals `sort(concat([abs(flatten(t)) for t in tensors]))[k]` exactly, without
    concatenating or sorting. Runs eagerly or compiled (`tf.function`,
    `jax.jit`), on every Keras backend: TensorFlow's own ops under TensorFlow
    (`tf.math.bincount`, a masked second pass), PyTorch's under PyTorch
    (`torch.bincount`), `keras.ops` elsewhere (`segment_sum` over a fixed number of
    buckets, so that the shapes do not depend on the data).

    Args:
        tensors: List of float tensors or variables of any shape. Values are
            compared as float32.
        k: Python int or int32 scalar tensor. The 0-based rank to select; must
            be in `[0, total size)`.

    Returns:
        A float32 scalar tensor.
    """
    if not tensors:
        raise ValueError(
            "Invalid value for argument `tensors`. Expected a non-empty list of "
            "tensors. Received: tensors=[]"
        )
    backend = keras.backend.backend()
    if backend == "torch":
        return _kth_smallest_torch([keras.ops.convert_to_tensor(t) for t in tensors], k)
    if backend != "tensorflow":
        return _kth_smallest_any_backend(tensors, k)
    import tensorflow as tf

    bits = [
        tf.bitcast(tf.abs(tf.reshape(tf.cast(t, tf.float32), [-1])), tf.int32)
        for t in tensors
    ]
    k = tf.cast(k, tf.int32)

    high = [tf.bitwise.right_shift(b, 16) for b in bits]
    high_counts = tf.add_n(
        [
            tf.math.bincount(
                h,
                minlength=_HIGH_BUCKETS,
                maxlength=_HIGH_BUCKETS,
                dtype=tf.int32,
            )
            for h in high
        ]
    )
    high_cumulative = tf.cumsum(high_counts)
    high_bucket = _first_index_above(high_cumulative, k)
    below = high_cumulative[high_bucket] - high_counts[high_bucket]

    low_counts = tf.add_n(
        [
            tf.math.bincount(
                tf.bitwise.bitwise_and(
                    tf.boolean_mask(b, tf.equal(h, high_bucket)), 0xFFFF
                ),
                minlength=_LOW_BUCKETS,
                maxlength=_LOW_BUCKETS,
                dtype=tf.int32,
            )
            for b, h in zip(bits, high, strict=True)
        ]
    )
    low_bucket = _first_index_above(tf.cumsum(low_counts) + below, k)
    pattern = tf.bitwise.bitwise_or(tf.bitwise.left_shift(high_bucket, 16), low_bucket)
    return tf.bitcast(pattern, tf.float32)
