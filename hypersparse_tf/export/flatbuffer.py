"""Reading TFLite flatbuffers: operators, sparse tensors, inputs and outputs.

Reads the flatbuffer with the TFLite schema and runs nothing: what
`to_tflite` checks before it returns a model, and what the reports count.
"""

import math

import numpy as np

EXTRA = 'pip install "hypersparse_tf[export]"'


def _schema():
    try:
        from tensorflow.lite.python import schema_py_generated
    except ImportError:  # pragma: no cover - depends on the TF build
        from ai_edge_litert import schema_py_generated
    return schema_py_generated


def check_tflite_bytes(tflite_bytes, argument="tflite_bytes"):
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
        - `"sparse_blocks"`: `{name: block shape}` of those tensors, e.g.
          `(1, 4)` for a FULLY_CONNECTED weight in 1x4 blocks (LiteRT's
          sparse kernels), `None` for element-wise sparse storage.
        - `"inputs"`, `"outputs"`: lists of dicts with `name`, `shape`,
          `dtype` (e.g. `"int8"`), `scale` and `zero_point` (arrays, or `None`
          for a tensor without quantization).
        - `"parameters"`: number of values stored in those tensors, zeros
          included (a sparse tensor counts its stored values).
        - `"macs"`: multiply-accumulates of one inference of the first
          subgraph (batch 1) in its `CONV_2D`, `DEPTHWISE_CONV_2D`,
          `TRANSPOSE_CONV` and `FULLY_CONNECTED` ops, counted dense (a kernel
          that skips zeros runs fewer).
        - `"nonzero_parameters"`: number of non-zero values stored in the
          constant tensors of float and int8/int16 type and in quantized int32
          tensors (int8 biases); shape constants are not counted. BatchNorm is
          folded into the convolutions by the converter.
    """
    data = check_tflite_bytes(tflite_bytes)
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
    sparse, inputs, outputs, blocks = [], [], [], {}
    nonzero = stored = macs = 0
    for s in range(model.SubgraphsLength()):
        subgraph = model.Subgraphs(s)
        for index in range(subgraph.TensorsLength()):
            tensor = subgraph.Tensors(index)
            if tensor.Sparsity() is not None:
                sparse.append(tensor.Name().decode())
                blocks[tensor.Name().decode()] = _block_shape(tensor)
            count, size = _count_nonzero(model, tensor, type_names, data)
            nonzero += count
            stored += size
        if s == 0:
            macs = _macs(model, subgraph, names)
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
        "sparse_blocks": blocks,
        "inputs": inputs,
        "outputs": outputs,
        "nonzero_parameters": nonzero,
        "parameters": stored,
        "macs": macs,
    }


def _macs(model, subgraph, names):
    """Dense multiply-accumulates of one inference (batch 1) of a subgraph."""

    def shape(position, operator):
        tensor = subgraph.Tensors(int(operator.Inputs(position)))
        return [int(d) for d in tensor.ShapeAsNumpy()] if tensor.ShapeLength() else []

    total = 0
    for index in range(subgraph.OperatorsLength()):
        operator = subgraph.Operators(index)
        code = model.OperatorCodes(operator.OpcodeIndex())
        name = names.get(max(code.BuiltinCode(), code.DeprecatedBuiltinCode()))
        output = subgraph.Tensors(int(operator.Outputs(0)))
        out = [int(d) for d in output.ShapeAsNumpy()] if output.ShapeLength() else []
        outputs = math.prod(max(d, 1) for d in out[1:])  # batch 1
        if name == "CONV_2D":  # filter (out, kh, kw, in / groups)
            total += outputs * math.prod(shape(1, operator)[1:])
        elif name == "DEPTHWISE_CONV_2D":  # filter (1, kh, kw, channels)
            total += outputs * math.prod(shape(1, operator)[1:3])
        elif name == "FULLY_CONNECTED":  # filter (units, in)
            total += outputs * shape(1, operator)[-1]
        elif name == "TRANSPOSE_CONV":  # filter (out, kh, kw, in), input 2
            filter_shape = shape(1, operator)
            inputs = math.prod(max(d, 1) for d in shape(2, operator)[1:])
            total += inputs * math.prod(filter_shape[:3])
    return int(total)


def _block_shape(tensor):
    """The block shape of a sparse tensor (one size per dense dimension), or
    None when it is stored without blocks."""
    sparsity = tensor.Sparsity()
    if sparsity.BlockMapLength() == 0:
        return None
    rank = tensor.ShapeLength()
    shape = [1] * rank
    block_sizes = [
        int(sparsity.DimMetadata(rank + i).DenseSize())
        for i in range(sparsity.BlockMapLength())
    ]
    for dimension, size in zip(sparsity.BlockMapAsNumpy(), block_sizes, strict=True):
        shape[int(dimension)] = size
    return tuple(shape)


def _count_nonzero(model, tensor, type_names, data):
    type_name = type_names.get(tensor.Type())
    quantized = (
        tensor.Quantization() is not None and tensor.Quantization().ScaleLength()
    )
    if type_name not in ("FLOAT32", "FLOAT16", "INT8", "INT16") and not (
        type_name in ("INT32", "INT64") and quantized
    ):
        return 0, 0
    if tensor.Buffer() <= 0 or tensor.Buffer() >= model.BuffersLength():
        return 0, 0
    buffer = model.Buffers(tensor.Buffer())
    raw = buffer.DataAsNumpy() if buffer.DataLength() else None
    if raw is None and buffer.Offset() > 1:
        raw = np.frombuffer(data, np.uint8, buffer.Size(), buffer.Offset())
    if raw is None or not len(raw):
        return 0, 0
    values = np.asarray(raw, np.uint8).view(_NUMPY_TYPES[type_name])
    return int(np.count_nonzero(values)), int(values.size)


def check_micro_flatbuffer(info, subject):
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


def single_io(info, function):
    if len(info["inputs"]) != 1 or len(info["outputs"]) != 1:
        raise ValueError(
            f"Invalid value for argument `tflite_bytes`: `{function}` runs models "
            f"with one input and one output. The model has {len(info['inputs'])} "
            f"inputs and {len(info['outputs'])} outputs."
        )
    return info["inputs"][0], info["outputs"][0]


def quantize(x, details):
    dtype = np.dtype(details["dtype"])
    if details["scale"] is None or not np.issubdtype(dtype, np.integer):
        return x.astype(dtype)
    info = np.iinfo(dtype)
    scale, zero_point = details["scale"][0], details["zero_point"][0]
    quantized = np.round(x / scale) + zero_point
    return np.clip(quantized, info.min, info.max).astype(dtype)


def dequantize(y, details):
    if details["scale"] is None or not np.issubdtype(y.dtype, np.integer):
        return y.astype(np.float32)
    scale, zero_point = details["scale"][0], details["zero_point"][0]
    return ((y.astype(np.float64) - zero_point) * scale).astype(np.float32)


def check_inputs(x, details, function):
    x = np.asarray(x, np.float32)
    expected = tuple(details["shape"][1:])
    if x.ndim != len(expected) + 1 or tuple(x.shape[1:]) != expected:
        raise ValueError(
            f"Invalid value for argument `x` of `{function}`. Expected float "
            f"inputs of shape (num_samples, *{expected}). Received: an array of "
            f"shape {x.shape}"
        )
    return x
