"""Running TFLite models in LiteRT (`ai_edge_litert`), the phone runtime."""

import time

import numpy as np

from hypersparse_tf.export import flatbuffer


def load_interpreter_module():
    try:
        from ai_edge_litert import interpreter
    except ImportError as err:
        raise ImportError(
            "Running TFLite models for phones needs the LiteRT interpreter of "
            f"the package `ai-edge-litert`. Install it with: {flatbuffer.EXTRA}"
        ) from err
    return interpreter


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
    interpreter_module = load_interpreter_module()
    tflite_bytes = flatbuffer.check_tflite_bytes(tflite_bytes)
    info = flatbuffer.inspect_tflite(tflite_bytes)
    in_details, out_details = flatbuffer.single_io(info, "run_tflite")
    if x is None:
        x = np.zeros((1, *in_details["shape"][1:]), np.float32)
    x = flatbuffer.check_inputs(x, in_details, "run_tflite")
    interpreter = interpreter_module.Interpreter(
        model_content=tflite_bytes, num_threads=num_threads
    )
    input_index = interpreter.get_input_details()[0]["index"]
    output_index = interpreter.get_output_details()[0]["index"]
    interpreter.resize_tensor_input(input_index, list(x.shape), strict=False)
    interpreter.allocate_tensors()
    interpreter.set_tensor(input_index, flatbuffer.quantize(x, in_details))
    interpreter.invoke()
    return flatbuffer.dequantize(interpreter.get_tensor(output_index), out_details)


def verify(tflite_bytes, quantization, sparse):
    """Loads the model in LiteRT and runs it once on zeros."""
    interpreter_module = load_interpreter_module()
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
    interpreter_module = load_interpreter_module()
    rng = np.random.default_rng(0)
    runners = {}
    for name, tflite_bytes in tflite_models.items():
        info = flatbuffer.inspect_tflite(tflite_bytes)
        in_details, _ = flatbuffer.single_io(info, "litert_latency")
        interpreter = interpreter_module.Interpreter(
            model_content=bytes(tflite_bytes), num_threads=num_threads
        )
        interpreter.allocate_tensors()
        index = interpreter.get_input_details()[0]["index"]
        x = rng.random((1, *in_details["shape"][1:]), np.float32)
        interpreter.set_tensor(index, flatbuffer.quantize(x, in_details))
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
