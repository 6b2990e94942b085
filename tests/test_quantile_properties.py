"""Property tests: the exact quantile and the masks on awkward float32 arrays
(ties, zeros, +-0.0, subnormals, huge ranges) always agree with np.sort and
always remove exactly floor(kappa * N) entries."""

import math

import numpy as np
import pytest
import tensorflow as tf

hypothesis = pytest.importorskip("hypothesis", reason="pip install hypothesis")
from hypothesis import given  # noqa: E402
from hypothesis import settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from hypothesis.extra import numpy as hnp  # noqa: E402

from hypersparse_tf import masks as masks_lib  # noqa: E402
from hypersparse_tf import regularizers  # noqa: E402
from hypersparse_tf.quantile import kth_smallest_magnitude  # noqa: E402

# Few distinct values (many ties), the signed zeros, subnormals, the extremes.
SPECIAL = [0.0, -0.0, 1e-45, -1e-45, 1e-40, 1.17549435e-38, 1.0, -1.0, 3.4e38, -3.4e38]
finite32 = st.one_of(
    st.sampled_from(SPECIAL),
    st.floats(width=32, allow_nan=False, allow_infinity=False),
)
arrays = hnp.arrays(
    np.float32, hnp.array_shapes(min_dims=1, max_dims=3, max_side=9), elements=finite32
)
array_lists = st.lists(arrays, min_size=1, max_size=4)
rates = st.floats(min_value=1e-3, max_value=0.999, exclude_min=False)


@settings(max_examples=150, deadline=None)
@given(array_lists, st.data())
def test_kth_smallest_magnitude_is_np_sort(values, data):
    flat = np.sort(np.concatenate([np.abs(v).ravel() for v in values]))
    k = data.draw(st.integers(0, flat.size - 1))
    got = kth_smallest_magnitude([tf.constant(v) for v in values], k).numpy()
    assert got.tobytes() == np.float32(flat[k]).tobytes()  # bit for bit


@settings(max_examples=150, deadline=None)
@given(array_lists, rates)
def test_magnitude_masks_remove_exactly_floor_kappa_n(values, rate):
    named = {f"w{i}": v for i, v in enumerate(values)}
    masks = masks_lib.magnitude_masks(named, rate)
    size = sum(v.size for v in values)
    removed = sum(int((~m).sum()) for m in masks.values())
    assert removed == math.floor(rate * size)
    kept = np.concatenate(
        [np.abs(v)[m] for v, m in zip(values, masks.values(), strict=True)]
    )
    gone = np.concatenate(
        [np.abs(v)[~m] for v, m in zip(values, masks.values(), strict=True)]
    )
    if kept.size and gone.size:  # nothing removed is larger than what stays
        assert gone.max() <= kept.min()


@settings(max_examples=60, deadline=None)
@given(array_lists, rates)
def test_hypersparse_threshold_is_the_exact_quantile(values, rate):
    reg = regularizers.HyperSparse(rate)
    reg.bind_kernels([tf.Variable(v) for v in values])
    reg.update_statistics()
    flat = np.sort(np.concatenate([np.abs(v).ravel() for v in values]))
    expected = np.float32(flat[math.floor(rate * flat.size)])
    assert reg.threshold.numpy().tobytes() == expected.tobytes()


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_update_statistics_refuses_non_finite_kernels(bad):
    kernel = np.ones((4, 4), np.float32)
    kernel[1, 2] = bad
    variable = tf.Variable(kernel)
    reg = regularizers.HyperSparse(0.5)
    reg.bind_kernels([variable])
    before = reg.threshold.numpy()
    with pytest.raises(regularizers.NonFiniteWeightsError, match="NaN or inf"):
        reg.update_statistics()
    assert reg.threshold.numpy() == before  # left as it was
