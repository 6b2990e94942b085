import numpy as np
import pytest
import tensorflow as tf

from hypersparse_tf.quantile import kth_smallest_magnitude


def _reference(arrays, k):
    return np.sort(np.concatenate([np.abs(a).ravel() for a in arrays]))[k]


def _arrays(seed):
    rng = np.random.default_rng(seed)
    return [
        rng.standard_normal((3, 3, 4, 8)).astype("float32"),
        rng.standard_normal((200,)).astype("float32") * 1e-3,
        rng.standard_normal((17, 5)).astype("float32") * 30,
    ]


@pytest.mark.parametrize("fraction", [0.0, 0.1, 0.5, 0.9, 0.999, 1.0])
def test_kth_smallest_magnitude_matches_sort(fraction):
    arrays = _arrays(0)
    size = sum(a.size for a in arrays)
    k = min(int(fraction * size), size - 1)
    got = kth_smallest_magnitude([tf.constant(a) for a in arrays], k)
    assert got.numpy() == _reference(arrays, k)


def test_kth_smallest_magnitude_on_ties_and_zeros():
    values = np.array([0.0, -0.0, 0.5, -0.5, 0.5, 0.25, 0.0, 2.0], dtype="float32")
    for k in range(values.size):
        got = kth_smallest_magnitude(
            [tf.constant(values[:3]), tf.constant(values[3:])], k
        )
        assert got.numpy() == _reference([values], k), k


def test_kth_smallest_magnitude_in_tf_function_with_variables():
    arrays = _arrays(1)
    variables = [tf.Variable(a) for a in arrays]
    size = sum(a.size for a in arrays)

    @tf.function
    def select(k):
        return kth_smallest_magnitude(variables, k)

    for k in [0, size // 3, size - 1]:
        assert select(tf.constant(k)).numpy() == _reference(arrays, k)


def test_kth_smallest_magnitude_same_high_bits():
    # Values that share their high 16 bits exercise the second pass alone.
    base = np.float32(1.0)
    values = np.array(
        [base + np.float32(i) * np.float32(2**-23) for i in range(50)],
        dtype="float32",
    )
    np.random.default_rng(0).shuffle(values)
    for k in [0, 7, 25, 49]:
        assert (
            kth_smallest_magnitude([tf.constant(values)], k).numpy()
            == np.sort(values)[k]
        )


def test_kth_smallest_magnitude_empty_list():
    with pytest.raises(ValueError, match="`tensors`"):
        kth_smallest_magnitude([], 0)
