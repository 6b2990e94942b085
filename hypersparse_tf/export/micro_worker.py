"""The child process that runs TFLite Micro (see `hypersparse_tf.export.micro`).

TFLite Micro can crash the process that runs it, so `micro` starts this file
by its path with the running Python: `python micro_worker.py MODE ...`. Run by
path, it imports only NumPy and `tflite_micro` (not `hypersparse_tf`, not
TensorFlow), so a child starts in well under a second.

Modes:
- `probe MODEL NUM_INPUTS`: reads arena sizes from stdin, one per line, and
  answers `1` (the model runs on zeros with that arena) or `0` per line.
- `run MODEL ARENA_SIZE INPUTS OUTPUTS`: runs the int8 samples of the `.npy`
  file INPUTS one by one and saves the outputs to the `.npy` file OUTPUTS.
- `latency NUM_RUNS NUM_WARMUP MODEL ARENA_SIZE [MODEL ARENA_SIZE ...]`: times
  `invoke` of each model on zeros in interleaved rounds and prints the median
  seconds of each, one per line.
"""

import sys
import time

import numpy as np


def make_interpreter(model, arena_size):
    """A TFLite Micro interpreter of the model bytes with `arena_size` bytes."""
    from tflite_micro import runtime

    return runtime.Interpreter.from_bytes(model, arena_size=arena_size)


def runs_on_zeros(model, arena_size, num_inputs):
    """Whether TFLite Micro runs the model on zeros with `arena_size` bytes."""
    try:
        interpreter = make_interpreter(model, arena_size)
        for index in range(num_inputs):
            details = interpreter.get_input_details(index)
            interpreter.set_input(np.zeros(details["shape"], details["dtype"]), index)
        interpreter.invoke()
    except Exception:  # TFLite Micro raises RuntimeError, ValueError, ...
        return False
    return True


def probe(model, num_inputs, lines, out):
    """Answers `1` or `0` on `out` for each arena size in `lines`."""
    for line in lines:
        answer = runs_on_zeros(model, int(line), num_inputs)
        out.write("1\n" if answer else "0\n")
        out.flush()


def run(model, arena_size, inputs):
    """The outputs of the model on each sample of `inputs` (batch of 1)."""
    interpreter = make_interpreter(model, arena_size)
    outputs = []
    for sample in inputs:
        interpreter.set_input(sample[None], 0)
        interpreter.invoke()
        outputs.append(np.array(interpreter.get_output(0)))
    return np.concatenate(outputs)


def latency(models, num_runs, num_warmup):
    """Median seconds of one `invoke` of each model, in interleaved rounds."""
    interpreters = []
    for model, arena_size in models:
        interpreter = make_interpreter(model, arena_size)
        details = interpreter.get_input_details(0)
        interpreter.set_input(np.zeros(details["shape"], details["dtype"]), 0)
        interpreters.append(interpreter)
    times = [[] for _ in interpreters]
    for round_index in range(num_warmup + num_runs):
        for index, interpreter in enumerate(interpreters):
            start = time.perf_counter()
            interpreter.invoke()
            elapsed = time.perf_counter() - start
            if round_index >= num_warmup:
                times[index].append(elapsed)
    return [float(np.median(values)) for values in times]


def main(argv):
    if argv[1] == "latency":
        models = []
        for path, arena_size in zip(argv[4::2], argv[5::2], strict=True):
            with open(path, "rb") as f:
                models.append((f.read(), int(arena_size)))
        for seconds in latency(models, int(argv[2]), int(argv[3])):
            print(repr(seconds))
        return
    mode, model_path = argv[1], argv[2]
    with open(model_path, "rb") as f:
        model = f.read()
    if mode == "probe":
        probe(model, int(argv[3]), sys.stdin, sys.stdout)
    elif mode == "run":
        arena_size, input_path, output_path = int(argv[3]), argv[4], argv[5]
        np.save(output_path, run(model, arena_size, np.load(input_path)))
    else:
        raise SystemExit(f"unknown mode {mode!r}: expected 'probe', 'run' or 'latency'")


if __name__ == "__main__":
    main(sys.argv)
