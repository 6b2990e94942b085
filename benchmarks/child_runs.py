"""Runs one experiment in a fresh Python process and returns its summary.

Each benchmark run gets a fresh TensorFlow, as `python3 examples/train.py`
does. `code` is a Python program that prints one line `SUMMARY <json>`; it
gets `args` and, last, a temporary run folder as its command-line arguments.
"""

import json
import os
import pathlib
import subprocess
import sys
import tempfile


def run_in_child(code, args):
    """The JSON summary `code` printed, run with `args` and a run folder."""
    root = pathlib.Path(__file__).resolve().parent.parent
    with tempfile.TemporaryDirectory() as directory:
        result = subprocess.run(
            [sys.executable, "-c", code, *(str(a) for a in args), directory + "/r"],
            capture_output=True,
            text=True,
            env=dict(os.environ, PYTHONPATH=str(root)),
            check=False,
        )
    if result.returncode != 0:
        raise RuntimeError(result.stderr[-3000:])
    line = next(x for x in result.stdout.splitlines() if x.startswith("SUMMARY "))
    return json.loads(line[len("SUMMARY ") :])
