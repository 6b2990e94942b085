"""The data a pruned copy is scored on, in any form `model.fit` takes.

- a tuple `(x, y)` or `(x, y, sample_weight)` of arrays, where `x` is one array,
  or a list, tuple or dict of arrays for a model with several inputs, and `y`
  one array, or a list or dict with one array per output;
- a `tf.data.Dataset` of such batches;
- a `keras.utils.PyDataset`.

Labels are sparse (class indices) or one-hot. `EvalData` checks the data once
and yields `(x, y, sample_weight)` batches, `sample_weight` None where there is
none.
"""

import keras
import numpy as np

from hypersparse_tf import validation

BATCH_SIZE = 256
_EXPECTED = (
    "(x, y) or (x, y, sample_weight) of arrays (x a list, tuple or dict of "
    "arrays for several inputs), a tf.data.Dataset of such batches, or a "
    "keras.utils.PyDataset"
)


def _is_tf_dataset(data):
    tf = _tensorflow()
    return tf is not None and isinstance(data, tf.data.Dataset)


def _tensorflow():
    import sys

    return sys.modules.get("tensorflow")


def _structure(value):
    """Lists become tuples: `tf.data` would stack a list of arrays into one."""
    if isinstance(value, list):
        return tuple(_structure(v) for v in value)
    if isinstance(value, dict):
        return {k: _structure(v) for k, v in value.items()}
    if isinstance(value, tuple):
        return tuple(_structure(v) for v in value)
    return value


def _length(value, what, argument):
    leaves = keras.tree.flatten(value)
    if not leaves:
        raise ValueError(validation.invalid(argument, _EXPECTED, f"empty {what}"))
    lengths = set()
    for leaf in leaves:
        shape = np.shape(leaf)
        if not shape:
            raise ValueError(
                f"Invalid value for argument `{argument}`: {what} holds a scalar, "
                f"not an array of samples. Expected {_EXPECTED}."
            )
        lengths.add(int(shape[0]))
    if len(lengths) != 1:
        raise ValueError(
            f"Invalid value for argument `{argument}`: the arrays of {what} have "
            f"different numbers of samples {sorted(lengths)}."
        )
    return lengths.pop()


class EvalData:
    """Checked evaluation data that yields `(x, y, sample_weight)` batches.

    Args:
        data: See the module docstring.
        argument: String. The argument's name in error messages. Defaults to
            `"eval_data"`.
    """

    def __init__(self, data, argument="eval_data"):
        self.data = data
        self.argument = argument
        if data is None:
            raise ValueError(validation.invalid(argument, _EXPECTED, None))
        if _is_tf_dataset(data):
            self.kind = "dataset"
            if int(data.cardinality()) == 0:
                raise ValueError(
                    f"Invalid value for argument `{argument}`. Expected a "
                    "non-empty dataset of (x, y) batches. Received an empty "
                    "dataset."
                )
            spec = data.element_spec
            if not isinstance(spec, tuple) or len(spec) not in (2, 3):
                raise ValueError(
                    f"Invalid value for argument `{argument}`: a dataset must "
                    "yield (x, y) or (x, y, sample_weight) batches. Received "
                    f"elements {spec!r:.200}"
                )
        elif isinstance(data, keras.utils.PyDataset):
            self.kind = "pydataset"
            if not data.num_batches:
                raise ValueError(
                    f"Invalid value for argument `{argument}`. Expected a "
                    "PyDataset with a length > 0 (`__len__`). Received one with "
                    f"num_batches={data.num_batches!r}"
                )
        elif isinstance(data, (tuple, list)) and len(data) in (2, 3):
            self.kind = "arrays"
            arrays = [_structure(part) for part in data]
            names = ("x", "y", "sample_weight")
            lengths = [
                _length(part, name, argument)
                for part, name in zip(arrays, names, strict=False)
            ]
            if len(set(lengths)) != 1 or lengths[0] == 0:
                raise ValueError(
                    f"Invalid value for argument `{argument}`. Expected (x, y) "
                    "with the same number > 0 of samples. Received "
                    + ", ".join(
                        f"{n} {name}"
                        for n, name in zip(
                            lengths, ("inputs", "labels", "weights"), strict=False
                        )
                    )
                    + "."
                )
            self.arrays = arrays
            self.size = lengths[0]
        else:
            raise ValueError(validation.invalid(argument, _EXPECTED, data))

    def __iter__(self):
        if self.kind == "arrays":
            for start in range(0, self.size, BATCH_SIZE):
                batch = [
                    keras.tree.map_structure(
                        lambda a, start=start: a[start : start + BATCH_SIZE], part
                    )
                    for part in self.arrays
                ]
                yield self._unpack(batch)
        elif self.kind == "dataset":
            for batch in self.data:
                yield self._unpack(batch)
        else:
            for index in range(self.data.num_batches):
                yield self._unpack(self.data[index])

    def _unpack(self, batch):
        if not isinstance(batch, (tuple, list)) or len(batch) not in (2, 3):
            raise ValueError(
                f"Invalid value for argument `{self.argument}`: a batch must be "
                f"(x, y) or (x, y, sample_weight). Received {type(batch).__name__}"
                f" of length {len(batch) if isinstance(batch, (tuple, list)) else '-'}"
            )
        x, y = _structure(batch[0]), batch[1]
        weight = batch[2] if len(batch) == 3 else None
        return x, y, weight

    def first_inputs(self, count):
        """The inputs of the first `count` samples, as one batch."""
        parts, seen = [], 0
        for x, _, _ in self:
            parts.append(keras.tree.map_structure(np.asarray, x))
            seen += int(np.shape(keras.tree.flatten(x)[0])[0])
            if seen >= count:
                break
        joined = keras.tree.map_structure(
            lambda *arrays: np.concatenate(arrays)[:count], *parts
        )
        return joined
