"""The accuracy of a pruned copy of a model, and the training accuracy ART reads.

`pruned_accuracy(model, masks, data)` measures what a model would score if
pruned with `masks`, without changing it: the masked weights are zeroed, the
data is run in inference mode, and the weights (and BatchNorm statistics) are
put back. With `recalibrate_batchnorm=n` the BatchNorm moving statistics are
first re-estimated on `n` samples, since pruning changes the activations that
the dense model's statistics were measured on. ART scores its candidates with
a `PrunedEvaluator`, which keeps the traced inference step between epochs.
"""

import sys

import keras
import numpy as np

from hypersparse_tf import _keras_compat
from hypersparse_tf import masks as masks_lib
from hypersparse_tf import prunable
from hypersparse_tf import validation
from hypersparse_tf.eval_data import EvalData

ACCURACY_NAMES = (
    "accuracy",
    "acc",
    "sparse_categorical_accuracy",
    "categorical_accuracy",
    "binary_accuracy",
)


def batchnorm_layers(model):
    """The BatchNormalization layers of a Keras 3 or tf_keras model, nested
    models included."""
    classes = [keras.layers.BatchNormalization]
    if prunable.is_tf_keras(model):
        classes.append(sys.modules["tf_keras"].layers.BatchNormalization)
    return [
        layer
        for layer in _keras_compat.flatten_layers(model, include_self=False)
        if isinstance(layer, tuple(classes))
    ]


def recalibrate_batchnorm(model, x):
    """Sets the BatchNorm moving statistics to the moments of `x`.

    One forward pass in training mode with every BatchNorm momentum at 0: each
    layer's moving mean and variance become the (biased) batch moments of its
    input on `x`, given the model's current weights. Nothing else changes.

    Args:
        model: A built Keras 3 or tf_keras model.
        x: Inputs, one batch (e.g. a few hundred training samples).

    Returns:
        List of `(variable, previous value)` pairs, to put the old statistics
        back with `variable.assign(value)`.

    Example:

    >>> hypersparse_tf.apply_masks(model, masks)
    >>> hypersparse_tf.recalibrate_batchnorm(model, x_train[:512])
    """
    layers = batchnorm_layers(model)
    saved = [
        (variable, np.asarray(variable.numpy()))
        for layer in layers
        for variable in (layer.moving_mean, layer.moving_variance)
    ]
    if not layers:
        return saved
    momenta = [layer.momentum for layer in layers]
    try:
        for layer in layers:
            layer.momentum = 0.0
        model(x, training=True)
    finally:
        for layer, momentum in zip(layers, momenta, strict=True):
            layer.momentum = momentum
    return saved


def output_names(model):
    """The names of a model's outputs (Keras 3 or tf_keras), or None."""
    names = getattr(model, "output_names", None)
    return list(names) if names else None


def check_metric(metric):
    """Raises unless `metric` is None or a `keras.metrics.Metric`."""
    if metric is not None and not isinstance(metric, keras.metrics.Metric):
        raise TypeError(
            validation.invalid("eval_metric", "None or a keras.metrics.Metric", metric)
        )


def check_output(model, output, metric=None):
    """Checks which output of `model` is scored; returns it (None = the only).

    Args:
        model: A built model.
        output: None, an int index or a name among `model.output_names`.
        metric: None or a `keras.metrics.Metric` (then the output may have a
            single unit, e.g. binary).
    """
    check_metric(metric)
    outputs = getattr(model, "outputs", None) or None
    names = output_names(model) or []
    if outputs is None:  # a subclassed model: checked when it runs
        return output
    if output is None:
        if len(outputs) != 1:
            raise ValueError(
                f"Model {model.name!r} has {len(outputs)} outputs {names}: ART "
                "reads the pruned accuracy from one. Pass "
                "`eval_output=<name or index>` (and `accuracy_metric=` with that "
                "output's accuracy in the logs)."
            )
        index = 0
    elif validation.is_int(output) and 0 <= output < len(outputs):
        index = int(output)
    elif isinstance(output, str) and output in names:
        index = names.index(output)
    else:
        raise ValueError(
            validation.invalid(
                "eval_output",
                f"None, an index < {len(outputs)} or one of {names}",
                output,
            )
        )
    if metric is None and (outputs[index].shape[-1] or 0) < 2:
        raise ValueError(
            "ART measures the pruned accuracy as the argmax over the classes of "
            f"an output; output {index} of model {model.name!r} has shape "
            f"{outputs[index].shape}. Pass `eval_metric=` (e.g. "
            "keras.metrics.BinaryAccuracy()) for it."
        )
    return output


def _pick(value, output, names):
    """The part of a list/tuple/dict `value` that belongs to `output`."""
    if isinstance(value, dict):
        key = names[output] if validation.is_int(output) else output
        if key is None and len(value) == 1:
            return next(iter(value.values()))
        return value[key]
    if isinstance(value, (list, tuple)):
        index = names.index(output) if isinstance(output, str) else output
        return value[index or 0]
    return value


def _inference_function(model):
    """`x -> model(x, training=False)`, compiled where the backend compiles:
    a `tf.function` under TensorFlow, a jitted `stateless_call` of the current
    weights under JAX, eager otherwise."""
    backend = keras.backend.backend()
    if backend == "tensorflow" or prunable.is_tf_keras(model):
        import tensorflow as tf

        return tf.function(lambda x: model(x, training=False), reduce_retracing=True)
    if backend == "jax":
        import jax

        jitted = jax.jit(
            lambda trainable, non_trainable, x: model.stateless_call(
                trainable, non_trainable, x, training=False
            )[0]
        )
        return lambda x: jitted(
            [v.value for v in model.trainable_variables],
            [v.value for v in model.non_trainable_variables],
            x,
        )
    return lambda x: keras.ops.convert_to_numpy(model(x, training=False))


class PrunedEvaluator:
    """Scores pruned copies of one model on one data set.

    Args:
        model: A built Keras 3 or tf_keras classifier.
        data: What `fit` takes, see `hypersparse_tf.eval_data` (or an
            `EvalData`).
        recalibrate_batchnorm: Int >= 0. Samples of `data` (the first ones)
            that the BatchNorm statistics are re-estimated on before each
            score; 0 keeps the model's. Defaults to `0`.
        output: None, or the name or index of the output that is scored (for
            a model with several). Defaults to `None`.
        metric: None or a `keras.metrics.Metric` computed instead of the top-1
            accuracy (e.g. `BinaryAccuracy` for a one-unit output). Defaults
            to `None`.
    """

    def __init__(self, model, data, recalibrate_batchnorm=0, output=None, metric=None):
        self.model = model
        self.data = data if isinstance(data, EvalData) else EvalData(data)
        self.recalibrate_batchnorm = validation.check_int(
            recalibrate_batchnorm, "recalibrate_batchnorm", 0
        )
        self.output = check_output(model, output, metric)
        self.metric = metric
        self._names = output_names(model) or [None]
        self._predict = None
        self._recalibration_inputs = None

    def recalibration_inputs(self):
        """The first `recalibrate_batchnorm` inputs of the data, one batch."""
        if self._recalibration_inputs is None:
            self._recalibration_inputs = self.data.first_inputs(
                self.recalibrate_batchnorm
            )
        return self._recalibration_inputs

    def recalibrate(self):
        """`recalibrate_batchnorm` on the evaluator's samples; returns the
        previous statistics (nothing when it is off)."""
        if not self.recalibrate_batchnorm or not batchnorm_layers(self.model):
            return []
        return recalibrate_batchnorm(self.model, self.recalibration_inputs())

    def accuracy(self):
        """The model's accuracy as it is, in inference mode: top-1 (weighted
        by the sample weights where the data has them), or `metric`."""
        if self._predict is None:
            self._predict = _inference_function(self.model)
        if self.metric is not None:
            self.metric.reset_state()
        correct = total = 0.0
        for x, y, weight in self.data:
            scores = _pick(self._predict(x), self.output, self._names)
            labels = _pick(y, self.output, self._names)
            if self.metric is not None:
                self.metric.update_state(labels, scores, sample_weight=weight)
                continue
            predicted = np.argmax(np.asarray(scores), axis=-1)
            labels = np.asarray(labels)
            if labels.ndim == predicted.ndim + 1 and labels.shape[-1] > 1:
                labels = np.argmax(labels, axis=-1)
            hits = (labels.reshape(predicted.shape) == predicted).astype(np.float64)
            if weight is None:
                weight = np.ones_like(hits)
            weight = np.asarray(weight, np.float64).reshape(hits.shape)
            correct += float(np.sum(hits * weight))
            total += float(np.sum(weight))
        if self.metric is not None:
            return float(np.asarray(self.metric.result()))
        return correct / total

    def pruned_accuracy(self, weights, masks):
        """Accuracy with `weights` pruned by `masks`; the model is put back.

        Args:
            weights: Dict `{key: variable}` of the pruned weights.
            masks: Dict `{key: bool array}` with the same keys.
        """
        values = {key: np.asarray(w.numpy()) for key, w in weights.items()}
        saved_statistics = []
        try:
            masks_lib.assign_masked(weights, masks)  # checks all masks first
            saved_statistics = self.recalibrate()
            return self.accuracy()
        finally:
            for key, weight in weights.items():
                weight.assign(values[key])
            for variable, value in saved_statistics:
                variable.assign(value)


def pruned_accuracy(
    model,
    masks,
    data,
    recalibrate_batchnorm=0,
    predicate=None,
    output=None,
    metric=None,
):
    """The accuracy `model` would have if pruned with `masks`.

    The masked weights are set to zero, `data` is run in inference mode
    (argmax of the single output against the labels, sparse or one-hot), and
    every weight and BatchNorm statistic is put back: the model is unchanged.
    This is how ART scores its pruned copy after each ART epoch.

    Args:
        model: A built Keras 3 or tf_keras classifier with one output.
        masks: Dict `{"<layer name>/<weight name>": bool array}`, one mask per
            prunable weight, True = kept (e.g. `global_magnitude_masks`).
        data: What `fit` takes: `(x, y)` or `(x, y, sample_weight)` of arrays
            (`x` a list or dict for several inputs), a `tf.data.Dataset` of
            such batches, or a `keras.utils.PyDataset`.
        recalibrate_batchnorm: Int >= 0. If > 0, the BatchNorm statistics of
            the pruned copy are re-estimated on the first this many samples of
            `data` before it is scored (see `recalibrate_batchnorm`). Defaults
            to `0`: the model's own statistics, as the reference code.
        predicate: Optional callable `(layer, weight) -> bool` choosing the
            prunable weights; the one the masks were made with. Defaults to
            `None`.
        output: None, or the name or index of the output to score, for a
            model with several. Defaults to `None`.
        metric: None or a `keras.metrics.Metric` to compute instead of the
            top-1 accuracy. Defaults to `None`.

    Returns:
        Float in [0, 1].

    Example:

    >>> masks = hypersparse_tf.global_magnitude_masks(model, 0.9)
    >>> hypersparse_tf.pruned_accuracy(model, masks, (x_train, y_train))
    0.93
    """
    weights = prunable.prunable_weights(model, predicate)
    evaluator = PrunedEvaluator(model, data, recalibrate_batchnorm, output, metric)
    return evaluator.pruned_accuracy(weights, masks)


class TrainingAccuracy:
    """Finds the training accuracy in a compiled model's epoch logs.

    Args:
        model: A compiled Keras 3 or tf_keras model.
        name: String or None. The name in the logs; None finds it among the
            compiled metrics.
    """

    def __init__(self, model, name=None):
        self.name = name
        self.key = name if name is not None else self._find(model)

    @staticmethod
    def _find(model):
        config = model.get_compile_config() or {}
        names = []  # (name in the logs, whether it is an accuracy)

        def collect(item):
            if isinstance(item, str):
                names.append((item, item in ACCURACY_NAMES))
            elif isinstance(item, dict) and "config" in item:
                name = item["config"].get("name", "")
                is_accuracy = str(item.get("class_name", "")).endswith("Accuracy")
                names.append((name, is_accuracy or name.endswith("accuracy")))
            elif isinstance(item, dict):
                for value in item.values():
                    collect(value)
            elif isinstance(item, (list, tuple)):
                for value in item:
                    collect(value)

        collect(config.get("metrics"))
        collect(config.get("weighted_metrics"))
        for name, is_accuracy in names:
            if is_accuracy:
                return name
        names = [name for name, _ in names]
        raise ValueError(
            f"ART found no accuracy metric among the compiled metrics {names} of "
            f"model {model.name!r}. Compile with metrics=['accuracy'] or "
            "pass `accuracy_metric=<name in the epoch logs>`."
        )

    def read(self, logs):
        """The training accuracy in one epoch's `logs`."""
        if self.key not in logs and self.name is None:
            # Keras may log a compiled metric under another name ("acc").
            found = [
                k
                for k in logs
                if not k.startswith("val_")
                and (k in ACCURACY_NAMES or k.endswith("accuracy"))
                and k != "pruned_accuracy"
            ]
            if len(found) == 1:
                self.key = found[0]
        if self.key in logs:
            return float(logs[self.key])
        raise KeyError(
            f"ART reads the training accuracy from the epoch logs under "
            f"{self.key!r}, which holds only {sorted(logs)}. Pass "
            "`accuracy_metric=` with one of these names."
        )


def check_art_model(model, regularizer, accuracy_metric, eval_output, eval_metric):
    """Checks what ART needs of the model `fit` trains; returns its kernels
    `{key: variable}` and its `TrainingAccuracy`."""
    from hypersparse_tf import attachment

    kernels = attachment.attached_weights(model, regularizer)
    if not kernels:
        raise ValueError(
            f"The regularizer {regularizer!r} is attached to no weight of model "
            f"{model.name!r}. Call `hypersparse_tf.attach(model, regularizer)` "
            "before `fit`."
        )
    if getattr(model, "optimizer", None) is None:
        raise ValueError(f"Model {model.name!r} is not compiled.")
    check_output(model, eval_output, eval_metric)
    outputs = getattr(model, "outputs", None) or []
    if len(outputs) > 1 and accuracy_metric is None:
        raise ValueError(
            f"Model {model.name!r} has {len(outputs)} outputs: pass "
            "`accuracy_metric=` with the key of the scored output's training "
            f"accuracy in the epoch logs (e.g. '{eval_output}_accuracy'), the "
            "number ART's rule compares the pruned accuracy with."
        )
    accuracy = TrainingAccuracy(model, accuracy_metric)
    return kernels, accuracy
