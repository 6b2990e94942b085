"""Export to TFLite for phones (LiteRT) and microcontrollers (TFLite Micro).

Every exported model is checked by running it: `target="mobile"` models in the
LiteRT interpreter of `ai_edge_litert`, `target="micro"` models in the TFLite
Micro interpreter of the `tflite_micro` package (install both with
`pip install "hypersparse_tf[export]"`).

What each runtime does with sparsity (measured with TF 2.21, ai-edge-litert 2.3
and tflite-micro):

- LiteRT: `Optimize.EXPERIMENTAL_SPARSITY` stores weights with >= 30% zeros in a
  sparse format: a 90%-sparse model is several times smaller. Most sparse
  weights are expanded again at load time by a `DENSIFY` op.
- TFLite Micro has neither `DENSIFY` nor sparse tensors. A micro model is a dense
  full-integer (int8) model; sparsity makes it smaller only where `shrink`
  removed whole units and channels.

TFLite Micro can crash the process that runs it (a too small tensor arena ends
in a segmentation fault), so this module always runs it in a child process.
"""

import contextlib
import gzip
import io
import os
import re
import subprocess
import sys
import tempfile
import time
import warnings

import numpy as np

from hypersparse_tf import prunable

TARGETS = ("mobile", "micro")
MOBILE_QUANTIZATIONS = ("float32", "float16", "dynamic_int8")
MICRO_QUANTIZATIONS = ("int8",)

_EXTRA = 'pip install "hypersparse_tf[export]"'
_MAX_ARENA_SIZE = 1 << 30
_C_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_MISSING_OP = re.compile(r"Didn't find op for builtin opcode '([A-Za-z0-9_]+)'")

# Runs in a child process: TFLite Micro may crash on a too small arena.
# "probe": reads arena sizes from stdin, answers 1 (accepted) or 0 per line.
# "run": runs the int8 samples of an .npy file one by one, saves the outputs.
_MICRO_CHILD = r"""
import sys

import numpy as np
from tflite_micro import runtime

mode, model_path = sys.argv[1], sys.argv[2]
with open(model_path, "rb") as f:
    data = f.read()


def make(arena_size):
    return runtime.Interpreter.from_bytes(data, arena_size=arena_size)


if mode == "probe":
    num_inputs = int(sys.argv[3])
    for line in sys.stdin:
        try:
            interpreter = make(int(line))
            for index in range(num_inputs):
                details = interpreter.get_input_details(index)
                zeros = np.zeros(details["shape"], details["dtype"])
                interpreter.set_input(zeros, index)
            interpreter.invoke()
            answer = "1"
        except Exception:
            answer = "0"
        print(answer, flush=True)
else:
    arena_size, input_path, output_path = int(sys.argv[3]), sys.argv[4], sys.argv[5]
    inputs = np.load(input_path)
    interpreter = make(arena_size)
    outputs = []
    for sample in inputs:
        interpreter.set_input(sample[None], 0)
        interpreter.invoke()
        outputs.append(np.array(interpreter.get_output(0)))
    np.save(output_path, np.concatenate(outputs))
"""


def _schema():
    try:
        from tensorflow.lite.python import schema_py_generated
    except ImportError:  # pragma: no cover - depends on the TF build
        from ai_edge_litert import schema_py_generated
    return schema_py_generated


def _litert_interpreter_module():
    try:
        from ai_edge_litert import interpreter
    except ImportError as err:
        raise ImportError(
            "Running TFLite models for phones needs the LiteRT interpreter of "
            f"the package `ai-edge-litert`. Install it with: {_EXTRA}"
        ) from err
    return interpreter


def _check_tflite_micro():
    try:
        import tflite_micro  # noqa: F401
    except ImportError as err:
        raise ImportError(
            "Running TFLite models for microcontrollers needs the TFLite Micro "
            f"interpreter of the package `tflite-micro`. Install it with: {_EXTRA}"
        ) from err


def _check_tflite_bytes(tflite_bytes, argument="tflite_bytes"):
    if not isinstance(tflite_bytes, bytes | bytearray) or not tflite_bytes:
        raise TypeError(
            f"Invalid value for argument `{argument}`. Expected the non-empty "
            "bytes of a TFLite flatbuffer, as `to_tflite` returns. Received: "
            f"{argument} of type {type(tflite_bytes).__name__}"
            + (" (empty)" if isinstance(tflite_bytes, bytes | bytearray) else "")
        )
    if bytes(tflite_bytes[4:8]) != b"TFL3":
        raise ValueError(
            f"Invalid value for argument `{argument}`: not a TFLite flatbuffer "
            "(the file identifier at bytes 4..8 is not 'TFL3'). Received: "
            f"{bytes(tflite_bytes[:8])!r}..."
        )
    return bytes(tflite_bytes)


# --------------------------------------------------------------------------
# Flatbuffer inspection


def _op_names(schema):
    return {
        value: name
        for name, value in vars(schema.BuiltinOperator).items()
        if not name.startswith("_")
    }


_NUMPY_TYPES = {
    "FLOAT32": np.float32,
    "FLOAT16": np.float16,
    "FLOAT64": np.float64,
    "INT8": np.int8,
    "UINT8": np.uint8,
    "INT16": np.int16,
    "INT32": np.int32,
    "INT64": np.int64,
}


def _tensor_details(schema, tensor, type_names):
    quantization = tensor.Quantization()
    scale = zero_point = None
    if quantization is not None and quantization.ScaleLength():
        scale = quantization.ScaleAsNumpy().astype(np.float64)
        zero_point = quantization.ZeroPointAsNumpy().astype(np.int64)
    return {
        "name": tensor.Name().decode(),
        "shape": tuple(int(d) for d in tensor.ShapeAsNumpy())
        if tensor.ShapeLength()
        else (),
        "dtype": type_names[tensor.Type()].lower(),
        "scale": scale,
        "zero_point": zero_point,
    }


def inspect_tflite(tflite_bytes):
    """What a TFLite flatbuffer holds: operators, sparse tensors, inputs, outputs.

    Reads the flatbuffer with the TFLite schema; runs nothing.

    Args:
        tflite_bytes: Bytes. A TFLite model.

    Returns:
        Dict with
        - `"operators"`: sorted list of the operator names (builtin names such
          as `"FULLY_CONNECTED"`, `"DENSIFY"`; custom ops as `"CUSTOM:<name>"`).
        - `"custom_operators"`: sorted list of the custom op names.
        - `"sparse_tensors"`: names of the tensors stored in sparse form.
        - `"inputs"`, `"outputs"`: lists of dicts with `name`, `shape`,
          `dtype` (e.g. `"int8"`), `scale` and `zero_point` (arrays, or `None`
          for a tensor without quantization).
        - `"nonzero_parameters"`: number of non-zero values stored in the
          constant tensors of float and int8/int16 type and in quantized int32
          tensors (int8 biases); shape constants are not counted. BatchNorm is
          folded into the convolutions by the converter.
    """
    data = _check_tflite_bytes(tflite_bytes)
    schema = _schema()
    model = schema.Model.GetRootAs(data, 0)
    names = _op_names(schema)
    type_names = {
        value: name
        for name, value in vars(schema.TensorType).items()
        if not name.startswith("_")
    }
    operators, custom = set(), set()
    for index in range(model.OperatorCodesLength()):
        code = model.OperatorCodes(index)
        builtin = max(code.BuiltinCode(), code.DeprecatedBuiltinCode())
        name = names.get(builtin, str(builtin))
        if name == "CUSTOM":
            custom_name = (code.CustomCode() or b"").decode()
            custom.add(custom_name)
            name = f"CUSTOM:{custom_name}"
        operators.add(name)
    sparse, inputs, outputs = [], [], []
    nonzero = 0
    for s in range(model.SubgraphsLength()):
        subgraph = model.Subgraphs(s)
        for index in range(subgraph.TensorsLength()):
            tensor = subgraph.Tensors(index)
            if tensor.Sparsity() is not None:
                sparse.append(tensor.Name().decode())
            nonzero += _count_nonzero(model, tensor, type_names, data)
        if s == 0:
            for index in range(subgraph.InputsLength()):
                tensor = subgraph.Tensors(subgraph.Inputs(index))
                inputs.append(_tensor_details(schema, tensor, type_names))
            for index in range(subgraph.OutputsLength()):
                tensor = subgraph.Tensors(subgraph.Outputs(index))
                outputs.append(_tensor_details(schema, tensor, type_names))
    return {
        "operators": sorted(operators),
        "custom_operators": sorted(custom),
        "sparse_tensors": sparse,
        "inputs": inputs,
        "outputs": outputs,
        "nonzero_parameters": nonzero,
    }


def _count_nonzero(model, tensor, type_names, data):
    type_name = type_names.get(tensor.Type())
    quantized = (
        tensor.Quantization() is not None and tensor.Quantization().ScaleLength()
    )
    if type_name not in ("FLOAT32", "FLOAT16", "INT8", "INT16") and not (
        type_name in ("INT32", "INT64") and quantized
    ):
        return 0
    if tensor.Buffer() <= 0 or tensor.Buffer() >= model.BuffersLength():
        return 0
    buffer = model.Buffers(tensor.Buffer())
    raw = buffer.DataAsNumpy() if buffer.DataLength() else None
    if raw is None and buffer.Offset() > 1:
        raw = np.frombuffer(data, np.uint8, buffer.Size(), buffer.Offset())
    if raw is None or not len(raw):
        return 0
    values = np.asarray(raw, np.uint8).view(_NUMPY_TYPES[type_name])
    return int(np.count_nonzero(values))


def _check_micro_flatbuffer(info, subject):
    problems = []
    if "DENSIFY" in info["operators"]:
        problems.append("it contains a DENSIFY op")
    if info["sparse_tensors"]:
        problems.append(
            f"{len(info['sparse_tensors'])} tensors are stored in sparse form "
            f"(e.g. {info['sparse_tensors'][0]!r})"
        )
    if info["custom_operators"]:
        problems.append(f"it contains the custom ops {info['custom_operators']}")
    for kind in ("inputs", "outputs"):
        dtypes = sorted({tensor["dtype"] for tensor in info[kind]})
        if dtypes != ["int8"]:
            problems.append(f"its {kind} are {dtypes}, not int8")
    if problems:
        raise ValueError(
            f"{subject} cannot go to TFLite Micro, which runs dense int8 models "
            "of builtin ops only: " + "; ".join(problems) + "."
        )


# --------------------------------------------------------------------------
# Conversion


def _check_choice(value, argument, choices):
    if not isinstance(value, str) or value not in choices:
        raise ValueError(
            f"Invalid value for argument `{argument}`. Expected one of "
            f"{choices}. Received: {argument}={value!r}"
        )


def _check_bool(value, argument):
    if not isinstance(value, bool):
        raise TypeError(
            f"Invalid value for argument `{argument}`. Expected a bool. "
            f"Received: {argument}={value!r}"
        )


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
    import tensorflow as tf

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
    _check_choice(target, "target", TARGETS)
    choices = MOBILE_QUANTIZATIONS if target == "mobile" else MICRO_QUANTIZATIONS
    quantization = choices[0] if quantization is None else quantization
    _check_choice(quantization, "quantization", choices)
    sparse = target == "mobile" if sparse is None else sparse
    _check_bool(sparse, "sparse")
    _check_bool(verify, "verify")
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
            _verify_litert(tflite_bytes, quantization, sparse)
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
    _check_micro_flatbuffer(inspect_tflite(tflite_bytes), "The converted model")
    if verify:
        _verify_micro(tflite_bytes)
    return tflite_bytes


def _verify_litert(tflite_bytes, quantization, sparse):
    """Loads the model in LiteRT and runs it once on zeros."""
    interpreter_module = _litert_interpreter_module()
    try:
        interpreter = interpreter_module.Interpreter(model_content=tflite_bytes)
        interpreter.allocate_tensors()
        for details in interpreter.get_input_details():
            zeros = np.zeros(details["shape"], details["dtype"])
            interpreter.set_tensor(details["index"], zeros)
        interpreter.invoke()
    except Exception as err:
        hint = ""
        if sparse and quantization == "dynamic_int8":
            hint = (
                " LiteRT's XNNPACK delegate refuses sparse dynamic-range int8 "
                "models: use sparse=False, or verify=False and run the model "
                "without the default delegates."
            )
        raise ValueError(
            f"LiteRT could not run the converted model "
            f"(quantization={quantization!r}, sparse={sparse}): {err}.{hint}"
        ) from err


# --------------------------------------------------------------------------
# Running models


def _quantize(x, details):
    dtype = np.dtype(details["dtype"])
    if details["scale"] is None or not np.issubdtype(dtype, np.integer):
        return x.astype(dtype)
    info = np.iinfo(dtype)
    scale, zero_point = details["scale"][0], details["zero_point"][0]
    quantized = np.round(x / scale) + zero_point
    return np.clip(quantized, info.min, info.max).astype(dtype)


def _dequantize(y, details):
    if details["scale"] is None or not np.issubdtype(y.dtype, np.integer):
        return y.astype(np.float32)
    scale, zero_point = details["scale"][0], details["zero_point"][0]
    return ((y.astype(np.float64) - zero_point) * scale).astype(np.float32)


def _single_io(info, function):
    if len(info["inputs"]) != 1 or len(info["outputs"]) != 1:
        raise ValueError(
            f"Invalid value for argument `tflite_bytes`: `{function}` runs models "
            f"with one input and one output. The model has {len(info['inputs'])} "
            f"inputs and {len(info['outputs'])} outputs."
        )
    return info["inputs"][0], info["outputs"][0]


def _check_inputs(x, details, function):
    x = np.asarray(x, np.float32)
    expected = tuple(details["shape"][1:])
    if x.ndim != len(expected) + 1 or tuple(x.shape[1:]) != expected:
        raise ValueError(
            f"Invalid value for argument `x` of `{function}`. Expected float "
            f"inputs of shape (num_samples, *{expected}). Received: an array of "
            f"shape {x.shape}"
        )
    return x


def run_tflite(tflite_bytes, x, num_threads=1):
    """Runs a TFLite model in LiteRT's interpreter (`ai_edge_litert`).

    Float inputs are quantized and integer outputs dequantized with the
    model's own parameters, so int8 models take and give floats too.

    Args:
        tflite_bytes: Bytes. A TFLite model with one input and one output.
        x: Float array of shape `(num_samples, *input_shape)`, or `None` to
            run the model once on zeros (a check that it runs).
        num_threads: Int. Threads of the interpreter. Defaults to `1`.

    Returns:
        Float32 array of the outputs, one row per sample.
    """
    interpreter_module = _litert_interpreter_module()
    tflite_bytes = _check_tflite_bytes(tflite_bytes)
    info = inspect_tflite(tflite_bytes)
    in_details, out_details = _single_io(info, "run_tflite")
    if x is None:
        x = np.zeros((1, *in_details["shape"][1:]), np.float32)
    x = _check_inputs(x, in_details, "run_tflite")
    interpreter = interpreter_module.Interpreter(
        model_content=tflite_bytes, num_threads=num_threads
    )
    input_index = interpreter.get_input_details()[0]["index"]
    output_index = interpreter.get_output_details()[0]["index"]
    interpreter.resize_tensor_input(input_index, list(x.shape), strict=False)
    interpreter.allocate_tensors()
    interpreter.set_tensor(input_index, _quantize(x, in_details))
    interpreter.invoke()
    return _dequantize(interpreter.get_tensor(output_index), out_details)


def _micro_child(args, **kwargs):
    return subprocess.Popen(
        [sys.executable, "-c", _MICRO_CHILD, *args], text=True, **kwargs
    )


def _micro_failure(tflite_bytes, arena_size):
    """None if TFLite Micro runs the model on zeros, else its error output."""
    with tempfile.TemporaryDirectory() as directory:
        model_path = os.path.join(directory, "model.tflite")
        with open(model_path, "wb") as f:
            f.write(tflite_bytes)
        num_inputs = len(inspect_tflite(tflite_bytes)["inputs"])
        child = _micro_child(
            ["probe", model_path, str(num_inputs)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        out, err = child.communicate(f"{arena_size}\n")
    if out.strip() == "1":
        return None
    return err.strip() or f"the TFLite Micro process ended with code {child.returncode}"


def _default_arena_size(tflite_bytes):
    """An arena far larger than any model needs; the host has the memory."""
    return max(16 * len(tflite_bytes), 64 << 20)


def _verify_micro(tflite_bytes):
    _check_tflite_micro()
    arena_size = _default_arena_size(tflite_bytes)
    failure = _micro_failure(tflite_bytes, arena_size)
    if failure is None:
        return
    missing = sorted(set(_MISSING_OP.findall(failure)))
    if missing:
        raise ValueError(
            f"TFLite Micro cannot run the op{'s' if len(missing) > 1 else ''} "
            f"{', '.join(missing)} of the converted model: it has no kernel for "
            f"{'them' if len(missing) > 1 else 'it'}. Replace the layer that "
            "makes it (e.g. a GELU activation by ReLU) before export."
        )
    raise ValueError(
        f"TFLite Micro refused the converted model (with a {arena_size}-byte "
        f"arena): {failure[-1500:]}"
    )


def run_micro(tflite_bytes, x, arena_size=None):
    """Runs an int8 TFLite model in the TFLite Micro interpreter, sample by sample.

    Runs in a child process (`tflite_micro.runtime.Interpreter`), the same
    kernels as on a board, with the host's pointer size. Float inputs are
    quantized and outputs dequantized with the model's own parameters.

    Args:
        tflite_bytes: Bytes. A micro model from `to_tflite(..., "micro")` with
            one input and one output.
        x: Float array of shape `(num_samples, *input_shape)`.
        arena_size: Int. Tensor arena in bytes. Defaults to `None`: 16 times
            the model size, at least 64 MiB (plenty; see `micro_arena_size` for
            the real need).

    Returns:
        Float32 array of the outputs, one row per sample.

    Raises:
        RuntimeError: with TFLite Micro's message if the run fails.
    """
    _check_tflite_micro()
    tflite_bytes = _check_tflite_bytes(tflite_bytes)
    info = inspect_tflite(tflite_bytes)
    _check_micro_flatbuffer(info, "Invalid value for argument `tflite_bytes`: it")
    in_details, out_details = _single_io(info, "run_micro")
    x = _check_inputs(x, in_details, "run_micro")
    if arena_size is None:
        arena_size = _default_arena_size(tflite_bytes)
    arena_size = _check_arena_size(arena_size, "arena_size")
    with tempfile.TemporaryDirectory() as directory:
        paths = [os.path.join(directory, n) for n in ("m.tflite", "x.npy", "y.npy")]
        with open(paths[0], "wb") as f:
            f.write(tflite_bytes)
        np.save(paths[1], _quantize(x, in_details))
        child = _micro_child(
            ["run", paths[0], str(arena_size), paths[1], paths[2]],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        _, err = child.communicate()
        if child.returncode != 0:
            raise RuntimeError(
                f"TFLite Micro failed to run the model (arena_size={arena_size}, "
                f"exit code {child.returncode}): {err.strip()[-1500:]}"
            )
        y = np.load(paths[2])
    return _dequantize(y, out_details)


def _check_arena_size(value, argument):
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        raise ValueError(
            f"Invalid value for argument `{argument}`. Expected a positive int "
            f"(bytes). Received: {argument}={value!r}"
        )
    return int(value)


class _MicroProbe:
    """A child process that tells which arena sizes TFLite Micro accepts."""

    def __init__(self, model_path, num_inputs):
        self._args = ["probe", model_path, str(num_inputs)]
        self._child = None

    def accepts(self, arena_size):
        if self._child is None:
            self._child = _micro_child(
                self._args,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
            )
        try:
            self._child.stdin.write(f"{arena_size}\n")
            self._child.stdin.flush()
            answer = self._child.stdout.readline()
        except BrokenPipeError:
            answer = ""
        if not answer:  # The child crashed on this arena: refused.
            self.close()
            return False
        return answer.strip() == "1"

    def close(self):
        if self._child is not None:
            with contextlib.suppress(OSError):
                self._child.stdin.close()
            self._child.kill()
            self._child.wait()
            self._child.stdout.close()
            self._child = None


def micro_arena_size(tflite_bytes, max_arena_size=_MAX_ARENA_SIZE):
    """The smallest tensor arena in which TFLite Micro runs a model, in bytes.

    Found by bisection: each candidate arena is tried by creating the TFLite
    Micro interpreter and running the model once on zeros, in a child process.
    The result is measured with the host build of TFLite Micro (64-bit
    pointers); a 32-bit board usually needs a little less. Give the board's
    `alignas(16) uint8_t tensor_arena[...]` this size plus a margin.

    Args:
        tflite_bytes: Bytes. A micro model from `to_tflite(..., "micro")`.
        max_arena_size: Int. Largest arena tried. Defaults to 1 GiB.

    Returns:
        Int. The arena size in bytes.

    Raises:
        ValueError: if the model does not run with `max_arena_size` bytes
            (with TFLite Micro's message, e.g. naming an op it lacks).
    """
    _check_tflite_micro()
    tflite_bytes = _check_tflite_bytes(tflite_bytes)
    max_arena_size = _check_arena_size(max_arena_size, "max_arena_size")
    info = inspect_tflite(tflite_bytes)
    _check_micro_flatbuffer(info, "Invalid value for argument `tflite_bytes`: it")
    num_inputs = len(info["inputs"])
    with tempfile.TemporaryDirectory() as directory:
        model_path = os.path.join(directory, "model.tflite")
        with open(model_path, "wb") as f:
            f.write(tflite_bytes)
        probe = _MicroProbe(model_path, num_inputs)
        try:
            low, high = 0, min(4096, max_arena_size)
            while not probe.accepts(high):
                if high >= max_arena_size:
                    failure = _micro_failure(tflite_bytes, max_arena_size)
                    raise ValueError(
                        "Invalid value for argument `tflite_bytes`: TFLite Micro "
                        f"does not run the model with an arena of {max_arena_size} "
                        f"bytes (`max_arena_size`): {(failure or '')[-1500:]}"
                    )
                low, high = high, min(2 * high, max_arena_size)
            while high - low > 1:
                middle = (low + high) // 2
                if probe.accepts(middle):
                    high = middle
                else:
                    low = middle
        finally:
            probe.close()
        fresh = _MicroProbe(model_path, num_inputs)
        try:
            accepted = fresh.accepts(high)
        finally:
            fresh.close()
    if not accepted:
        raise RuntimeError(
            f"TFLite Micro accepted an arena of {high} bytes in one process and "
            "refused it in another: its arena need is not reproducible here."
        )
    return high


def litert_latency(tflite_models, num_runs=200, num_warmup=20, num_threads=1):
    """Median latency of TFLite models in LiteRT, measured in interleaved runs.

    Each round runs every model once, in turn, on the same random input (batch
    of 1), so that load changes of a shared machine hit all models alike.

    Args:
        tflite_models: Dict `{name: tflite bytes}`.
        num_runs: Int. Timed rounds. Defaults to `200`.
        num_warmup: Int. Untimed rounds first. Defaults to `20`.
        num_threads: Int. Interpreter threads. Defaults to `1`.

    Returns:
        Dict `{name: median seconds per inference}`.
    """
    interpreter_module = _litert_interpreter_module()
    rng = np.random.default_rng(0)
    runners = {}
    for name, tflite_bytes in tflite_models.items():
        info = inspect_tflite(tflite_bytes)
        in_details, _ = _single_io(info, "litert_latency")
        interpreter = interpreter_module.Interpreter(
            model_content=bytes(tflite_bytes), num_threads=num_threads
        )
        interpreter.allocate_tensors()
        index = interpreter.get_input_details()[0]["index"]
        x = rng.random((1, *in_details["shape"][1:]), np.float32)
        interpreter.set_tensor(index, _quantize(x, in_details))
        runners[name] = interpreter
    times = {name: [] for name in runners}
    for round_index in range(num_warmup + num_runs):
        for name, interpreter in runners.items():
            start = time.perf_counter()
            interpreter.invoke()
            elapsed = time.perf_counter() - start
            if round_index >= num_warmup:
                times[name].append(elapsed)
    return {name: float(np.median(values)) for name, values in times.items()}


# --------------------------------------------------------------------------
# C arrays for boards


def write_c_array(tflite_bytes, path, name):
    """Writes a model as a C++ array, the way boards take it.

    Writes `<path>.h`, declaring `extern const unsigned char <name>[];` and
    `extern const unsigned int <name>_len;` inside an include guard, and
    `<path>.cc`, defining `alignas(16) const unsigned char <name>[] = {...};`
    (TFLite Micro wants the model 16-byte aligned) and its length. Both files
    are written to temporary files first and renamed: on error, none is left.

    Args:
        tflite_bytes: Bytes. The model.
        path: Path without extension, e.g. `"src/model_data"`. Its directory
            must exist.
        name: String. A C identifier, the array's name, e.g. `"g_model"`.

    Returns:
        Tuple `(header_path, source_path)` of strings.

    Raises:
        ValueError: for a `name` that is not a C identifier.
        OSError: naming `path` if a file cannot be written.
    """
    tflite_bytes = _check_tflite_bytes(tflite_bytes)
    if not isinstance(name, str) or not _C_IDENTIFIER.match(name):
        raise ValueError(
            "Invalid value for argument `name`. Expected a C identifier (letters, "
            f"digits, underscores; not starting with a digit). Received: name={name!r}"
        )
    if not isinstance(path, str | os.PathLike) or not os.fspath(path):
        raise TypeError(
            "Invalid value for argument `path`. Expected a non-empty path "
            f"without extension. Received: path={path!r}"
        )
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise OSError(
            f"Invalid value for argument `path`: the directory {directory!r} does "
            f"not exist (or is not a directory). Received: path={path!r}"
        )
    header_path, source_path = f"{path}.h", f"{path}.cc"
    base = os.path.basename(path)
    guard = re.sub(r"[^A-Za-z0-9]", "_", base).upper() + "_H_"
    if not guard[0].isalpha():
        guard = "MODEL_" + guard
    length = len(tflite_bytes)
    header = (
        f"// TFLite model `{name}` ({length} bytes), written by "
        "hypersparse_tf.export.write_c_array.\n"
        f"#ifndef {guard}\n"
        f"#define {guard}\n\n"
        f"extern const unsigned char {name}[];\n"
        f"extern const unsigned int {name}_len;\n\n"
        f"#endif  // {guard}\n"
    )
    rows = []
    for start in range(0, length, 12):
        chunk = tflite_bytes[start : start + 12]
        rows.append("    " + ", ".join(f"0x{byte:02x}" for byte in chunk) + ",")
    source = (
        f'#include "{base}.h"\n\n'
        "// TFLite Micro reads the model in place: keep it 16-byte aligned.\n"
        f"alignas(16) const unsigned char {name}[] = {{\n" + "\n".join(rows) + "\n};\n"
        f"const unsigned int {name}_len = {length};\n"
    )
    _write_files({header_path: header, source_path: source}, path)
    return header_path, source_path


def _write_files(contents, argument_value):
    """Writes all files or none: temporary files first, then renames."""
    temporaries, renamed = {}, []
    try:
        for target, text in contents.items():
            handle, temporary = tempfile.mkstemp(
                prefix=".tmp-", dir=os.path.dirname(os.path.abspath(target))
            )
            temporaries[target] = temporary
            with os.fdopen(handle, "w") as f:
                f.write(text)
            # mkstemp makes the file private (0600); give it the permissions a
            # plain `open` would, under the process's umask.
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(temporary, 0o666 & ~umask)
        for target, temporary in temporaries.items():
            os.replace(temporary, target)
            renamed.append(target)
    except OSError as err:
        for leftover in [*temporaries.values(), *renamed]:
            with contextlib.suppress(OSError):
                os.remove(leftover)
        raise OSError(
            f"Invalid value for argument `path`: cannot write the C array files "
            f"for path={argument_value!r}: {err}"
        ) from err


# --------------------------------------------------------------------------
# Deployment report


def _gzip_size(data):
    return len(gzip.compress(data, compresslevel=9, mtime=0))


def _keras_size(model):
    """Bytes of the `.keras` file of the model alone, without optimizer state."""
    if getattr(model, "optimizer", None) is not None:
        # A fresh model from the config: `clone_model` would compile it again.
        copy = model.__class__.from_config(model.get_config())
        copy.set_weights(model.get_weights())
        model = copy
    with tempfile.TemporaryDirectory() as directory:
        path = os.path.join(directory, "model.keras")
        model.save(path)
        with open(path, "rb") as f:
            data = f.read()
    return len(data), _gzip_size(data)


def _keras_nonzero(model):
    return int(sum(np.count_nonzero(w.numpy()) for w in model.weights))


def deployment_report(model, representative_data, x, y, name=None):
    """Sizes, arena, accuracy and agreement of every artifact of a model.

    Artifacts: the Keras model (`.keras` file without optimizer state, its
    non-zero parameters counted over all its weights), `mobile_float` (float32,
    dense encoding), `mobile_sparse` (float32, sparse encoding), `micro_int8`
    (full int8) and `micro_int8_shrunk` (full int8 of `shrink(model)`). Each is
    run on `x` in its interpreter.

    Args:
        model: A built Keras 3 Sequential or functional classifier with one
            input and one output (scores or probabilities per class).
        representative_data: Calibration inputs for the micro models (see
            `to_tflite`).
        x: Float array `(num_samples, *input_shape)`. Evaluation inputs.
        y: Int array `(num_samples,)`. Their class labels.
        name: Optional string naming the model in the report. Defaults to
            `None`: the model's name.

    Returns:
        Dict with `"model"`, `"num_samples"` and `"artifacts"`: a list of dicts
        with `artifact`, `bytes`, `gzip_bytes`, `nonzero_parameters`,
        `arena_bytes` (micro only, else `None`), `accuracy`, `agreement` (the
        fraction of samples whose argmax equals the Keras model's) and
        `max_abs_diff` (largest difference of outputs to the Keras model's).
        Render it with `report_markdown`.
    """
    from hypersparse_tf.shrink import shrink

    prunable.check_model(model)
    x = np.asarray(x, np.float32)
    y = np.asarray(y)
    if y.shape != (len(x),):
        raise ValueError(
            "Invalid value for argument `y`. Expected integer labels of shape "
            f"({len(x)},), one per sample of `x`. Received: shape {y.shape}"
        )
    reference = np.asarray(model.predict(x, verbose=0, batch_size=256), np.float32)
    keras_bytes, keras_gzip = _keras_size(model)
    rows = [
        _row("keras", keras_bytes, keras_gzip, _keras_nonzero(model), None)
        | _quality(reference, reference, y)
    ]
    artifacts = {
        "mobile_float": to_tflite(model, "mobile", sparse=False),
        "mobile_sparse": to_tflite(model, "mobile", sparse=True),
        "micro_int8": to_tflite(model, "micro", representative_data),
        "micro_int8_shrunk": to_tflite(
            shrink(model, verify_inputs=x[:64]), "micro", representative_data
        ),
    }
    for artifact, tflite_bytes in artifacts.items():
        micro = artifact.startswith("micro")
        outputs = run_micro(tflite_bytes, x) if micro else run_tflite(tflite_bytes, x)
        rows.append(
            _row(
                artifact,
                len(tflite_bytes),
                _gzip_size(tflite_bytes),
                inspect_tflite(tflite_bytes)["nonzero_parameters"],
                micro_arena_size(tflite_bytes) if micro else None,
            )
            | _quality(outputs.reshape(reference.shape), reference, y)
        )
    return {
        "model": name if name is not None else model.name,
        "num_samples": len(x),
        "artifacts": rows,
    }


def _row(artifact, size, gzip_size, nonzero, arena):
    return {
        "artifact": artifact,
        "bytes": int(size),
        "gzip_bytes": int(gzip_size),
        "nonzero_parameters": int(nonzero),
        "arena_bytes": arena,
    }


def _quality(outputs, reference, y):
    predicted = np.argmax(outputs, axis=-1)
    return {
        "accuracy": float(np.mean(predicted == y)),
        "agreement": float(np.mean(predicted == np.argmax(reference, axis=-1))),
        "max_abs_diff": float(np.max(np.abs(outputs - reference))),
    }


def report_markdown(report):
    """Renders a `deployment_report` as a Markdown table.

    Args:
        report: Dict from `deployment_report`.

    Returns:
        A Markdown string: a title line and one table row per artifact.
    """
    lines = [
        f"Deployment of `{report['model']}` ({report['num_samples']} evaluation "
        "samples; agreement = argmax equal to the Keras model's)",
        "",
        "| artifact | bytes | gzip bytes | non-zero params | TFLM arena bytes "
        "| accuracy | agreement | max abs diff |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in report["artifacts"]:
        arena = "" if row["arena_bytes"] is None else f"{row['arena_bytes']:,}"
        lines.append(
            f"| {row['artifact']} | {row['bytes']:,} | {row['gzip_bytes']:,} | "
            f"{row['nonzero_parameters']:,} | {arena} | {row['accuracy']:.2%} | "
            f"{row['agreement']:.2%} | {row['max_abs_diff']:.2g} |"
        )
    return "\n".join(lines) + "\n"
