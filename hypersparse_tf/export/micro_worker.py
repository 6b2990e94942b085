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
"""

import sys

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


def main(argv):
    mode, model_path = argv[1], argv[2]
    with open(model_path, "rb") as f:
        model = f.read()
    if mode == "probe":
        probe(model, int(argv[3]), sys.stdin, sys.stdout)
    elif mode == "run":
        arena_size, input_path, output_path = int(argv[3]), argv[4], argv[5]
        np.save(output_path, run(model, arena_size, np.load(input_path)))
    else:
        raise SystemExit(f"unknown mode {mode!r}: expected 'probe' or 'run'")


if __name__ == "__main__":
    main(sys.argv)
