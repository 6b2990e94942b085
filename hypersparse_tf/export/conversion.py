"""Converting Keras models to TFLite for phones and for microcontrollers."""

import contextlib
import io
import warnings

import keras
import numpy as np

from hypersparse_tf import prunable
from hypersparse_tf import validation
from hypersparse_tf.export import flatbuffer
from hypersparse_tf.export import litert
from hypersparse_tf.export import micro

TARGETS = ("mobile", "micro")
MOBILE_QUANTIZATIONS = ("float32", "float16", "dynamic_int8")
MICRO_QUANTIZATIONS = ("int8",)


def _representative_dataset(model, representative_data):
    """A TFLite representative dataset function from an array or a callable."""
    if callable(representative_data):
        return representative_data
    inputs = getattr(model, "inputs", None) or [None]
    if len(inputs) != 1:
        raise ValueError(
            "Invalid value for argument `representative_data`: model "
            f"{model.name!r} has {len(inputs)} inputs. Pass a callable "
            "that yields one list of arrays (one per input) per sample."
        )
    if inputs[0] is None:  # A subclassed model: the converter checks shapes.
        expected = (None,) * (np.ndim(representative_data) - 1)
    else:
        expected = tuple(inputs[0].shape[1:])
    try:
        data = np.asarray(representative_data, np.float32)
    except (TypeError, ValueError) as err:
        raise ValueError(
            "Invalid value for argument `representative_data`. Expected an "
            f"array of input samples. Received: {type(representative_data)}"
        ) from err
    matches = data.ndim == len(expected) + 1 and all(
        want is None or want == got
        for want, got in zip(expected, data.shape[1:], strict=True)
    )
    if not matches or len(data) == 0:
        raise ValueError(
            "Invalid value for argument `representative_data`. Expected a "
            f"non-empty array of shape (num_samples, *{expected}), samples like "
            f"the model's input. Received: an array of shape {data.shape}"
        )

    def dataset():
        for index in range(len(data)):
            yield [data[index : index + 1]]

    return dataset


def _convert(model, target, configure):
    if keras.backend.backend() != "tensorflow":
        raise RuntimeError(
            "to_tflite converts with TensorFlow's TFLite converter, which takes "
            "models of the TensorFlow backend; this process runs Keras on "
            f"{keras.backend.backend()!r}. Save the model (`model.save("
            '"model.keras")`) and convert it in a process with '
            "KERAS_BACKEND=tensorflow: its regularizers and masks load with it."
        )
    try:
        import tensorflow as tf
    except ImportError as error:
        raise ImportError(
            "to_tflite needs TensorFlow: pip install tensorflow"
        ) from error

    try:
        converter = tf.lite.TFLiteConverter.from_keras_model(model)
        configure(converter, tf)
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            # The converter warns about int8 input statistics it computes itself.
            warnings.filterwarnings("ignore", "Statistics for quantized inputs")
            return converter.convert()
    except Exception as err:
        message = " ".join(str(err).split())
        if len(message) > 2000:
            message = message[:2000] + " ..."
        raise ValueError(
            f"Invalid value for argument `model`: converting model "
            f"{model.name!r} to TFLite (target={target!r}) failed: "
            f"{type(err).__name__}: {message}"
        ) from err


def to_tflite(
    model,
    target,
    representative_data=None,
    quantization=None,
    sparse=None,
    verify=True,
):
    """Converts a Keras model to a TFLite flatbuffer for a phone or a board.

    - `target="mobile"`: for LiteRT on phones and computers. Float32 weights by
      default, `quantization="float16"` halves them, `"dynamic_int8"` stores
      int8 weights (dynamic-range quantization). With `sparse=True` (the
      default), weights with >= 30% zeros are stored in sparse form
      (`Optimize.EXPERIMENTAL_SPARSITY`).
    - `target="micro"`: for TFLite Micro on microcontrollers. Full integer
      quantization from `representative_data`: int8 weights, activations,
      input and output, builtin ops only, dense tensors only. The flatbuffer is
      checked (no DENSIFY op, no sparse tensor, no custom op, int8 input and
      output) before it is returned. Run `shrink` first to make sparsity pay.

    With `verify=True`, the model is loaded and run once on zeros in its
    interpreter (LiteRT or TFLite Micro) before it is returned.

    Args:
        model: A built Keras model.
        target: String. `"mobile"` or `"micro"`.
        representative_data: Calibration inputs for `target="micro"`: an array
            of shape `(num_samples, *input_shape)` (a few hundred training
            samples are plenty) or a callable that yields one list of arrays
            (one per model input, batch of 1) per sample. Must be `None` for
            `target="mobile"`. Defaults to `None`.
        quantization: String. For `"mobile"`: `"float32"`, `"float16"` or
            `"dynamic_int8"`; for `"micro"`: `"int8"`. Defaults to `None`, the
            first of these.
        sparse: Bool. Whether to store sparse weights in sparse form; only
            `"mobile"` models can be sparse. Defaults to `None`: `True` for
            `"mobile"`, `False` for `"micro"`.
        verify: Bool. Whether to run the converted model once in its
            interpreter before returning it. Defaults to `True`.

    Returns:
        The TFLite flatbuffer as bytes.

    Raises:
        ValueError: for an unknown `target` or `quantization`, missing or
            misshaped `representative_data`, a failed conversion (with the
            converter's message), a micro model with an op TFLite Micro cannot
            run (the op is named), or a model its interpreter refuses.
        ImportError: if `verify=True` and the interpreter is not installed.

    Example:

    >>> flatbuffer = hypersparse_tf.export.to_tflite(
    ...     hypersparse_tf.shrink(model), "micro", representative_data=x[:200])
    >>> hypersparse_tf.export.write_c_array(flatbuffer, "model_data", "g_model")
    """
    validation.check_choice(target, "target", TARGETS)
    choices = MOBILE_QUANTIZATIONS if target == "mobile" else MICRO_QUANTIZATIONS
    quantization = choices[0] if quantization is None else quantization
    validation.check_choice(quantization, "quantization", choices)
    sparse = target == "mobile" if sparse is None else sparse
    validation.check_bool(sparse, "sparse")
    validation.check_bool(verify, "verify")
    prunable.check_model(model)
    if target == "mobile":
        if representative_data is not None:
            raise ValueError(
                "Invalid value for argument `representative_data`: it calibrates "
                "the full-integer quantization of target='micro' and is not used "
                "by target='mobile'. Expected None. Received: representative_data "
                f"of type {type(representative_data).__name__}"
            )

        def configure(converter, tf):
            optimizations = []
            if quantization != "float32":
                optimizations.append(tf.lite.Optimize.DEFAULT)
            if quantization == "float16":
                converter.target_spec.supported_types = [tf.float16]
            if sparse:
                optimizations.append(tf.lite.Optimize.EXPERIMENTAL_SPARSITY)
            converter.optimizations = optimizations

        tflite_bytes = _convert(model, target, configure)
        if verify:
            litert.verify(tflite_bytes, quantization, sparse)
        return tflite_bytes

    if sparse:
        raise ValueError(
            "Invalid value for argument `sparse`: TFLite Micro has no sparse "
            "tensors and no DENSIFY op, so a micro model must be dense. Use "
            "`shrink` to turn sparsity into a smaller dense model. Expected "
            "False or None. Received: sparse=True"
        )
    if representative_data is None:
        raise ValueError(
            "Invalid value for argument `representative_data`: target='micro' "
            "needs calibration inputs for its full-integer quantization. "
            "Expected an array of shape (num_samples, *input_shape), e.g. a few "
            "hundred training inputs. Received: representative_data=None"
        )
    dataset = _representative_dataset(model, representative_data)

    def configure(converter, tf):
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = dataset
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.int8
        converter.inference_output_type = tf.int8

    tflite_bytes = _convert(model, target, configure)
    flatbuffer.check_micro_flatbuffer(
        flatbuffer.inspect_tflite(tflite_bytes), "The converted model"
    )
    if verify:
        micro.verify(tflite_bytes)
    return tflite_bytes
