"""ART's eval_data takes what `fit` takes: arrays, several inputs, datasets
with sample weights, PyDatasets, one-hot labels, a chosen output."""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

import hypersparse_tf
from hypersparse_tf import evaluation
from hypersparse_tf.eval_data import EvalData
from tests.art_helpers import FAST
from tests.art_helpers import compiled
from tests.art_helpers import digits
from tests.art_helpers import mlp


def _two_inputs(seed=0):
    """A shared Dense applied to two inputs, then Concatenate."""
    keras.utils.set_random_seed(seed)
    a, b = keras.Input((32,), name="a"), keras.Input((32,), name="b")
    shared = keras.layers.Dense(48, activation="relu", name="shared")
    h = keras.layers.Concatenate()([shared(a), shared(b)])
    outputs = keras.layers.Dense(10, activation="softmax", name="out")(h)
    return compiled(keras.Model([a, b], outputs, name="two_inputs"))


def _split(x):
    return x[:, :32], x[:, 32:]


def _numpy_accuracy(model, x, y, weight=None):
    predicted = np.argmax(model.predict(x, verbose=0), axis=-1)
    weight = np.ones(len(y)) if weight is None else weight
    return float(np.sum((predicted == y) * weight) / np.sum(weight))


def test_two_input_model_with_a_shared_layer_reaches_done_and_exports(tmp_path):
    x, _, y, _ = digits()
    x1, x2 = _split(x)
    model = _two_inputs()
    reg = hypersparse_tf.HyperSparse(0.9)
    hypersparse_tf.attach(model, reg)
    art = hypersparse_tf.ART(reg, eval_data=([x1, x2], y), **FAST)
    model.fit([x1, x2], y, batch_size=64, epochs=200, callbacks=[art], verbose=0)
    assert art.phase == "done"
    weights = hypersparse_tf.prunable_weights(model)
    n = sum(int(np.prod(w.shape)) for w in weights.values())
    zeros = sum(int(np.sum(w.numpy() == 0)) for w in weights.values())
    assert zeros == math.floor(0.9 * n)  # the shared kernel counted once
    flatbuffer = hypersparse_tf.export.to_tflite(model, "mobile")
    info = hypersparse_tf.export.inspect_tflite(flatbuffer)
    assert len(info["inputs"]) == 2
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=flatbuffer)
    interpreter.allocate_tensors()
    by_name = {d["name"]: d["index"] for d in interpreter.get_input_details()}
    for name, part in zip(sorted(by_name), (x1[:1], x2[:1]), strict=True):
        interpreter.set_tensor(by_name[name], part)
    interpreter.invoke()
    output = interpreter.get_tensor(interpreter.get_output_details()[0]["index"])
    expected = model.predict([x1[:1], x2[:1]], verbose=0)
    np.testing.assert_allclose(output, expected, atol=1e-5)


@pytest.mark.parametrize("form", ["list", "tuple", "dict", "dataset", "pydataset"])
def test_pruned_accuracy_takes_every_form_of_two_inputs(form):
    x, _, y, _ = digits()
    x1, x2 = _split(x)
    model = _two_inputs()
    masks = hypersparse_tf.global_magnitude_masks(model, 0.5)
    if form == "list":
        data = ([x1, x2], y)
    elif form == "tuple":
        data = ((x1, x2), y)
    elif form == "dict":
        data = ({"a": x1, "b": x2}, y)
    elif form == "dataset":
        data = tf.data.Dataset.from_tensor_slices(((x1, x2), y)).batch(100)
    else:

        class Batches(keras.utils.PyDataset):
            def __len__(self):
                return math.ceil(len(y) / 100)

            def __getitem__(self, index):
                s = slice(100 * index, 100 * (index + 1))
                return (x1[s], x2[s]), y[s]

        data = Batches()
    accuracy = hypersparse_tf.pruned_accuracy(model, masks, data)
    hypersparse_tf.apply_masks(model, masks)
    assert accuracy == pytest.approx(_numpy_accuracy(model, [x1, x2], y), abs=1e-12)


def test_sample_weights_weight_the_pruned_accuracy():
    x, _, y, _ = digits()
    model = mlp()
    compiled(model).fit(x, y, epochs=2, verbose=0)
    masks = hypersparse_tf.global_magnitude_masks(model, 0.8)
    weight = 1.0 + 20.0 * (y < 3)  # digits 0-2 count 21 times
    weighted = tf.data.Dataset.from_tensor_slices((x, y, weight)).batch(64)
    accuracy = hypersparse_tf.pruned_accuracy(model, masks, weighted)
    arrays = hypersparse_tf.pruned_accuracy(model, masks, (x, y, weight))
    hypersparse_tf.apply_masks(model, masks)
    expected = _numpy_accuracy(model, x, y, weight)
    assert accuracy == pytest.approx(expected, abs=1e-12)
    assert arrays == pytest.approx(expected, abs=1e-12)
    assert abs(expected - _numpy_accuracy(model, x, y)) > 1e-3  # weights matter


def test_one_hot_and_sparse_labels_score_the_same():
    x, _, y, _ = digits()
    model = mlp()
    masks = hypersparse_tf.global_magnitude_masks(model, 0.5)
    sparse = hypersparse_tf.pruned_accuracy(model, masks, (x, y))
    one_hot = hypersparse_tf.pruned_accuracy(
        model, masks, (x, keras.utils.to_categorical(y, 10))
    )
    column = hypersparse_tf.pruned_accuracy(model, masks, (x, y[:, None]))
    assert sparse == one_hot == column


def _two_outputs(seed=0):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((64,))
    h = keras.layers.Dense(32, activation="relu", name="h")(inputs)
    digit = keras.layers.Dense(10, activation="softmax", name="digit")(h)
    odd = keras.layers.Dense(1, activation="sigmoid", name="odd")(h)
    model = keras.Model(inputs, [digit, odd], name="two_outputs")
    model.compile(
        optimizer=keras.optimizers.SGD(0.1, momentum=0.9),
        loss=["sparse_categorical_crossentropy", "binary_crossentropy"],
        metrics=[["accuracy"], ["binary_accuracy"]],
    )
    return model


def test_multi_output_model_scores_the_named_output_or_a_metric():
    x, _, y, _ = digits()
    labels = [y, (y % 2).astype("float32")]
    model = _two_outputs()
    masks = hypersparse_tf.global_magnitude_masks(model, 0.5)
    digit = hypersparse_tf.pruned_accuracy(model, masks, (x, labels), output="digit")
    by_index = hypersparse_tf.pruned_accuracy(model, masks, (x, labels), output=0)
    odd = hypersparse_tf.pruned_accuracy(
        model, masks, (x, labels), output="odd", metric=keras.metrics.BinaryAccuracy()
    )
    as_dict = hypersparse_tf.pruned_accuracy(
        model, masks, (x, {"digit": y, "odd": labels[1]}), output="digit"
    )
    hypersparse_tf.apply_masks(model, masks)
    scores, probability = model.predict(x, verbose=0)
    assert digit == by_index == as_dict
    assert digit == pytest.approx(np.mean(np.argmax(scores, -1) == y), abs=1e-12)
    expected_odd = np.mean((probability[:, 0] > 0.5) == (y % 2 == 1))
    assert odd == pytest.approx(expected_odd, abs=1e-6)


def test_multi_output_model_needs_an_output_and_an_accuracy_key():
    x, _, y, _ = digits()
    labels = [y, (y % 2).astype("float32")]
    model = _two_outputs()
    masks = hypersparse_tf.global_magnitude_masks(model, 0.5)
    with pytest.raises(ValueError, match=r"2 outputs \['digit', 'odd'\].*eval_output"):
        hypersparse_tf.pruned_accuracy(model, masks, (x, labels))
    with pytest.raises(ValueError, match="argument `eval_output`"):
        hypersparse_tf.pruned_accuracy(model, masks, (x, labels), output="even")
    with pytest.raises(ValueError, match="eval_metric="):
        hypersparse_tf.pruned_accuracy(model, masks, (x, labels), output="odd")
    reg = hypersparse_tf.HyperSparse(0.9)
    hypersparse_tf.attach(model, reg)
    art = hypersparse_tf.ART(reg, (x, labels), eval_output="digit", **FAST)
    with pytest.raises(ValueError, match="accuracy_metric="):
        model.fit(x, labels, epochs=1, callbacks=[art], verbose=0)
    art = hypersparse_tf.ART(
        reg, (x, labels), eval_output="digit", accuracy_metric="digit_accuracy", **FAST
    )
    history = model.fit(x, labels, epochs=2, callbacks=[art], verbose=0)
    assert art.history[1]["accuracy"] == history.history["digit_accuracy"][1]


@pytest.mark.parametrize(
    "data, message",
    [
        (None, "argument `eval_data`"),
        ((np.zeros((4, 2)),), "argument `eval_data`"),
        ((np.zeros((4, 2)), np.zeros(3)), "same number > 0 of samples"),
        (([np.zeros((4, 2)), np.zeros((5, 2))], np.zeros(4)), "different numbers"),
        ((np.zeros((0, 2)), np.zeros(0)), "same number > 0"),
        ((np.zeros((4, 2)), np.zeros(4), np.zeros(3)), "3 weights"),
        (tf.data.Dataset.range(3), "must yield \\(x, y\\)"),
        (tf.data.Dataset.range(0), "empty dataset"),
        (np.zeros((4, 2)), "argument `eval_data`"),
    ],
)
def test_eval_data_bad_forms_name_the_argument(data, message):
    with pytest.raises(ValueError, match=message):
        EvalData(data)


def test_eval_data_first_inputs_keep_the_structure():
    x, _, y, _ = digits()
    x1, x2 = _split(x)
    first = EvalData(({"a": x1, "b": x2}, y)).first_inputs(300)
    np.testing.assert_array_equal(first["a"], x1[:300])
    np.testing.assert_array_equal(first["b"], x2[:300])
    assert evaluation.output_names(_two_inputs()) == ["out"]
