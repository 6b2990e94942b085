"""Running int8 models in TFLite Micro, the microcontroller runtime.

TFLite Micro can crash the process that runs it (a too small tensor arena ends
in a segmentation fault), so every run happens in a child process: the script
`micro_worker.py` beside this module, started by its path (it imports only
NumPy and `tflite_micro`, not this package or TensorFlow).
"""

import contextlib
import os
import re
import subprocess
import sys
import tempfile

import numpy as np

from hypersparse_tf import validation
from hypersparse_tf.export import flatbuffer
from hypersparse_tf.export import micro_worker

MAX_ARENA_SIZE = 1 << 30
_MISSING_OP = re.compile(r"Didn't find op for builtin opcode '([A-Za-z0-9_]+)'")


def check_tflite_micro():
    try:
        import tflite_micro  # noqa: F401
    except ImportError as err:
        raise ImportError(
            "Running TFLite models for microcontrollers needs the TFLite Micro "
            "interpreter of the package `tflite-micro`. Install it with: "
            f"{flatbuffer.EXTRA}"
        ) from err


def _micro_child(args, **kwargs):
    return subprocess.Popen(
        [sys.executable, micro_worker.__file__, *args], text=True, **kwargs
    )


def _micro_failure(tflite_bytes, arena_size):
    """None if TFLite Micro runs the model on zeros, else its error output."""
    with tempfile.TemporaryDirectory() as directory:
        model_path = os.path.join(directory, "model.tflite")
        with open(model_path, "wb") as f:
            f.write(tflite_bytes)
        num_inputs = len(flatbuffer.inspect_tflite(tflite_bytes)["inputs"])
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


def verify(tflite_bytes):
    check_tflite_micro()
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
    check_tflite_micro()
    tflite_bytes = flatbuffer.check_tflite_bytes(tflite_bytes)
    info = flatbuffer.inspect_tflite(tflite_bytes)
    flatbuffer.check_micro_flatbuffer(
        info, "Invalid value for argument `tflite_bytes`: it"
    )
    in_details, out_details = flatbuffer.single_io(info, "run_micro")
    x = flatbuffer.check_inputs(x, in_details, "run_micro")
    if arena_size is None:
        arena_size = _default_arena_size(tflite_bytes)
    arena_size = validation.check_int(arena_size, "arena_size", 1)
    with tempfile.TemporaryDirectory() as directory:
        paths = [os.path.join(directory, n) for n in ("m.tflite", "x.npy", "y.npy")]
        with open(paths[0], "wb") as f:
            f.write(tflite_bytes)
        np.save(paths[1], flatbuffer.quantize(x, in_details))
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
    return flatbuffer.dequantize(y, out_details)


def micro_latency(tflite_models, num_runs=50, num_warmup=5):
    """Median host latency of int8 models in TFLite Micro, interleaved.

    Runs every model once per round, in turn, on zeros (batch of 1), in one
    child process, each with its smallest arena (`micro_arena_size`): the
    reference kernels a board runs, timed on this host's CPU. Compare the
    models of one call with each other; the host is not a board.

    Args:
        tflite_models: Dict `{name: micro model bytes}`.
        num_runs: Int >= 1. Timed rounds. Defaults to `50`.
        num_warmup: Int >= 0. Untimed rounds first. Defaults to `5`.

    Returns:
        Dict `{name: median seconds per inference}`.
    """
    check_tflite_micro()
    num_runs = validation.check_int(num_runs, "num_runs", 1)
    num_warmup = validation.check_int(num_warmup, "num_warmup", 0)
    names = list(tflite_models)
    with tempfile.TemporaryDirectory() as directory:
        args = ["latency", str(num_runs), str(num_warmup)]
        for index, name in enumerate(names):
            data = flatbuffer.check_tflite_bytes(tflite_models[name])
            path = os.path.join(directory, f"{index}.tflite")
            with open(path, "wb") as f:
                f.write(data)
            args += [path, str(micro_arena_size(data))]
        child = _micro_child(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        out, err = child.communicate()
        if child.returncode != 0:
            raise RuntimeError(
                f"TFLite Micro failed to time the models (exit code "
                f"{child.returncode}): {err.strip()[-1500:]}"
            )
    seconds = [float(line) for line in out.split()]
    return dict(zip(names, seconds, strict=True))


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


def micro_arena_size(tflite_bytes, max_arena_size=MAX_ARENA_SIZE):
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
    check_tflite_micro()
    tflite_bytes = flatbuffer.check_tflite_bytes(tflite_bytes)
    max_arena_size = validation.check_int(max_arena_size, "max_arena_size", 1)
    info = flatbuffer.inspect_tflite(tflite_bytes)
    flatbuffer.check_micro_flatbuffer(
        info, "Invalid value for argument `tflite_bytes`: it"
    )
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
