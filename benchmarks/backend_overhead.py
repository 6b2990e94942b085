r"""HyperSparse's training-step overhead on each Keras backend (ResNet-32, CPU).

For each backend of `--backends`, in its own child process (Keras reads
`KERAS_BACKEND` once): three ResNet-32s (`models.resnet(32)`, CIFAR shape,
random data, batch 64, SGD(0.1, momentum 0.9), same seed) - no regularizer,
HyperSparse with its statistics refreshed before EVERY step by a callback (as
ART does: on JAX it first syncs the state `fit` carries between steps, so the
refresh reads the current kernels and the next step reads the new statistics),
and AdaptiveL1 - trained in short interleaved fits, the order rotated from
round to round. A ratio is taken per round from the medians of the per-step
wall times (from `on_train_batch_begin` of the first callback to
`on_train_batch_end`, so the refresh is inside), and reported as the median
over rounds with its quartiles. The ratios compare configurations of one
backend measured side by side; the step times of different backends ran one
after the other and are given for scale only.

    PYTHONPATH=. python3 benchmarks/backend_overhead.py

Results: `benchmarks/results/backend_overhead.md` and `.json`.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import datetime  # noqa: E402
import importlib.util  # noqa: E402
import json  # noqa: E402
import pathlib  # noqa: E402
import platform  # noqa: E402
import shlex  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
from absl import app  # noqa: E402
from absl import flags  # noqa: E402

_BACKENDS = flags.DEFINE_list(
    "backends", ["tensorflow", "jax", "torch"], "Keras backends (missing: skipped)."
)
_ROUNDS = flags.DEFINE_integer("rounds", 10, "Interleaved rounds of timed fits.")
_STEPS = flags.DEFINE_integer("steps", 3, "Timed steps per fit.")
_BATCH = flags.DEFINE_integer("batch_size", 64, "Batch size.")
_TARGET = flags.DEFINE_float("target", 1.10, "Target HyperSparse / plain ratio.")
_CHILD = flags.DEFINE_string("child", None, "Internal: measure in this process.")
_OUTPUT = flags.DEFINE_string(
    "output", "benchmarks/results/backend_overhead", "Results, without suffix."
)
CONFIGURATIONS = ("plain", "hypersparse", "l1")


def measure(rounds, steps, batch_size):
    """In a child process: per configuration, the per-round median steps."""
    import keras

    import hypersparse_tf
    from hypersparse_tf import backend_state
    from hypersparse_tf import models

    class StepTimer(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.times, self.start = [], None

        def on_train_batch_begin(self, batch, logs=None):
            self.start = time.perf_counter()

        def on_train_batch_end(self, batch, logs=None):
            self.times.append(time.perf_counter() - self.start)

    class Refresh(keras.callbacks.Callback):
        def __init__(self, regularizer):
            super().__init__()
            self.regularizer = regularizer

        def on_train_batch_begin(self, batch, logs=None):
            backend_state.sync_for_callback(self.model)
            self.regularizer.update_statistics()

    rng = np.random.default_rng(0)
    x = rng.normal(size=(batch_size * steps, 32, 32, 3)).astype("float32")
    y = rng.integers(0, 10, batch_size * steps)
    setups = {}
    for name in CONFIGURATIONS:
        keras.utils.set_random_seed(0)
        model = models.resnet(32, input_shape=(32, 32, 3))
        model.compile(
            optimizer=keras.optimizers.SGD(0.1, momentum=0.9),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        )
        callbacks = []
        if name == "hypersparse":
            reg = hypersparse_tf.HyperSparse(0.9, coefficient=5e-6)
            hypersparse_tf.attach(model, reg)
            callbacks.append(Refresh(reg))
        elif name == "l1":
            hypersparse_tf.attach(model, hypersparse_tf.AdaptiveL1(5e-6))
        setups[name] = (model, callbacks)
        model.fit(x[:batch_size], y[:batch_size], batch_size=batch_size, verbose=0)
    medians = {name: [] for name in CONFIGURATIONS}
    for index in range(rounds):
        order = CONFIGURATIONS[index % 3 :] + CONFIGURATIONS[: index % 3]
        for name in order:
            model, callbacks = setups[name]
            timer = StepTimer()
            model.fit(
                x, y, batch_size=batch_size, verbose=0, callbacks=[timer, *callbacks]
            )
            medians[name].append(float(np.median(timer.times)))
    return {"backend": keras.backend.backend(), "medians": medians}


def _quartiles(values):
    return [float(np.percentile(values, q)) for q in (25, 50, 75)]


def write(out, results, command, elapsed):
    lines = [
        "# HyperSparse step overhead per Keras backend (ResNet-32, CPU)",
        "",
        f"Run on {datetime.date.today().isoformat()}, {platform.machine()}, "
        f"{os.cpu_count()} CPU cores (shared), {elapsed / 60:.1f} minutes:",
        "",
        f"    {command}",
        "",
        "HyperSparse refreshed before every step (as ART does; on JAX after "
        "syncing the state `fit` carries) and AdaptiveL1 against no "
        "regularizer; per round the ratio of median step times, then the "
        "median over rounds (quartiles). Step times of different backends "
        "were measured one after the other: for scale only.",
        "",
        "| backend | plain step | HyperSparse / plain | quartiles | AdaptiveL1 / plain "
        f"| target (HyperSparse <= {_TARGET.value:.2f}x) |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for result in results:
        if "skipped" in result:
            lines.append(f"| {result['backend']} | {result['skipped']} | | | | |")
            continue
        medians = result["medians"]
        plain = np.array(medians["plain"])
        hs = _quartiles(np.array(medians["hypersparse"]) / plain)
        l1 = _quartiles(np.array(medians["l1"]) / plain)
        met = "met" if hs[1] <= _TARGET.value else "MISSED"
        lines.append(
            f"| {result['backend']} | {1e3 * np.median(plain):.0f} ms | "
            f"{hs[1]:.3f}x | {hs[0]:.3f} - {hs[2]:.3f} | {l1[1]:.3f}x | {met} |"
        )
    pathlib.Path(out + ".md").write_text("\n".join(lines) + "\n")
    pathlib.Path(out + ".json").write_text(json.dumps(results, indent=1))
    print("\n".join(lines))


def main(argv):
    del argv
    if _CHILD.value:
        result = measure(_ROUNDS.value, _STEPS.value, _BATCH.value)
        pathlib.Path(_CHILD.value).write_text(json.dumps(result))
        return
    root = pathlib.Path(__file__).resolve().parent.parent
    results = []
    start = time.perf_counter()
    for backend in _BACKENDS.value:
        package = {"tensorflow": "tensorflow", "jax": "jax", "torch": "torch"}[backend]
        if importlib.util.find_spec(package) is None:
            results.append({"backend": backend, "skipped": f"{package} not installed"})
            continue
        path = f"/tmp/backend_overhead_{backend}.json"
        child = subprocess.run(
            [
                sys.executable,
                __file__,
                f"--child={path}",
                f"--rounds={_ROUNDS.value}",
                f"--steps={_STEPS.value}",
                f"--batch_size={_BATCH.value}",
            ],
            env=dict(os.environ, KERAS_BACKEND=backend, PYTHONPATH=str(root)),
            capture_output=True,
            text=True,
            check=False,
        )
        if child.returncode != 0:
            raise RuntimeError(f"{backend}: {child.stderr[-3000:]}")
        results.append(json.loads(pathlib.Path(path).read_text()))
    command = "PYTHONPATH=. python3 " + shlex.join(sys.argv)
    write(_OUTPUT.value, results, command, time.perf_counter() - start)


if __name__ == "__main__":
    app.run(main)
