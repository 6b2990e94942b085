r"""The default main job (`python3 examples/train.py`) over several seeds.

One run tells a user little: fine-tuning is not bit-reproducible across CPUs,
and seeds spread. This runs `experiment.train_and_evaluate` with the default
`Config` for each seed (and, with `--recalibrate_batchnorm=0,512`, both ways
of scoring the pruned copy of the BatchNorm CNN), one after the other, and
writes the mean, standard deviation, minimum and maximum of what the README
reports: ART epochs to termination, dense, sparse (last and best fine-tuning
epoch) and TFLite Micro test accuracy, micro model and arena bytes, wall time.

    PYTHONPATH=. python3 benchmarks/default_run_seeds.py

Results: `benchmarks/results/default_run_seeds.md` and `.json`.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import datetime  # noqa: E402
import json  # noqa: E402
import pathlib  # noqa: E402
import platform  # noqa: E402
import shlex  # noqa: E402
import sys  # noqa: E402

import numpy as np  # noqa: E402
from absl import app  # noqa: E402
from absl import flags  # noqa: E402

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from child_runs import run_in_child  # noqa: E402

_SEEDS = flags.DEFINE_list("seeds", ["0", "1", "2"], "Seeds of the default run.")
_RECALIBRATE = flags.DEFINE_list(
    "recalibrate_batchnorm",
    ["0"],
    "Values of Config.recalibrate_batchnorm to run each seed with.",
)
_OUTPUT_DIR = flags.DEFINE_string(
    "output_dir", "benchmarks/results", "Where the results are written."
)
_NAME = flags.DEFINE_string("name", "default_run_seeds", "Result file name.")

QUANTITIES = (
    ("art_epochs", "ART epochs to termination", "{:.1f}", 1),
    ("epochs", "epochs in all", "{:.1f}", 1),
    ("dense_test_accuracy", "dense test accuracy (end of warm-up) %", "{:.2f}", 100),
    ("sparse_test_accuracy", "sparse test accuracy, last epoch %", "{:.2f}", 100),
    (
        "best_finetune_test_accuracy",
        "sparse test accuracy, best fine-tuning epoch %",
        "{:.2f}",
        100,
    ),
    ("micro_test_accuracy", "int8 test accuracy on TFLite Micro %", "{:.2f}", 100),
    ("sparsity", "sparsity of the kernels %", "{:.2f}", 100),
    ("micro_bytes", "micro model bytes", "{:,.0f}", 1),
    ("micro_arena_bytes", "micro tensor arena bytes", "{:,.0f}", 1),
    ("wall_seconds", "wall time s", "{:.0f}", 1),
)

# One run per process: a fresh TensorFlow, as `python3 examples/train.py`.
_RUN = r"""
import json, sys
from hypersparse_tf import experiment
seed, recalibrate = int(sys.argv[1]), int(sys.argv[2])
config = experiment.Config(seed=seed, recalibrate_batchnorm=recalibrate)
summary = experiment.train_and_evaluate(config, sys.argv[3], verbose=0)
summary.pop("deployment_report", None)
print("SUMMARY " + json.dumps(summary, default=str))
"""


def run(seed, recalibrate):
    return run_in_child(_RUN, [seed, recalibrate])


def _stats(values):
    values = np.asarray(values, np.float64)
    spread = values.std(ddof=1) if len(values) > 1 else 0.0
    return values.mean(), spread, values.min(), values.max()


def write_markdown(path, runs, argv):
    lines = [
        "# The default main job over seeds",
        "",
        f"Written by `benchmarks/default_run_seeds.py` on {datetime.date.today()}, "
        f"{platform.machine()}, {os.cpu_count()} CPU cores, Python "
        f"{platform.python_version()}.",
        "",
        "Command (from the repository root):",
        "",
        "    " + " ".join(shlex.quote(a) for a in argv),
        "",
        "Each run is `experiment.train_and_evaluate(Config(seed=s))`, the default "
        "job of `python3 examples/train.py` (digits, small CNN, 95%), in its own "
        "process. Mean ± standard deviation over the seeds [min - max]. The bits "
        "differ from one CPU to another (the same seed on another machine of the "
        "same kind gave other numbers); on one machine the same seed repeats "
        "exactly.",
        "",
    ]
    for recalibrate in sorted({r["recalibrate_batchnorm"] for r in runs}):
        group = [r for r in runs if r["recalibrate_batchnorm"] == recalibrate]
        seeds = [r["seed"] for r in group]
        lines += [
            f"## recalibrate_batchnorm={recalibrate}"
            + (" (the reference's scoring)" if recalibrate == 0 else ""),
            "",
            f"Seeds {seeds}.",
            "",
            "| quantity | mean ± std [min - max] | per seed |",
            "|---|---|---|",
        ]
        for key, label, fmt, scale in QUANTITIES:
            values = [r[key] * scale for r in group if r.get(key) is not None]
            if not values:
                continue
            mean, spread, low, high = _stats(values)
            cells = ", ".join(fmt.format(v) for v in values)
            lines.append(
                f"| {label} | {fmt.format(mean)} ± {fmt.format(spread)} "
                f"[{fmt.format(low)} - {fmt.format(high)}] | {cells} |"
            )
        lines.append("")
    pathlib.Path(path).write_text("\n".join(lines))


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    runs = []
    for recalibrate in (int(v) for v in _RECALIBRATE.value):
        for seed in (int(s) for s in _SEEDS.value):
            summary = run(seed, recalibrate)
            summary.update(seed=seed, recalibrate_batchnorm=recalibrate)
            runs.append(summary)
            print(f"seed {seed} recalibrate {recalibrate}: done", flush=True)
    out = pathlib.Path(_OUTPUT_DIR.value)
    out.mkdir(parents=True, exist_ok=True)
    command = ["PYTHONPATH=.", "python3", "benchmarks/default_run_seeds.py"]
    command += sys.argv[1:]
    for r in runs:
        r.pop("config", None)
    with open(out / f"{_NAME.value}.json", "w") as f:
        json.dump(dict(command=command, runs=runs), f, indent=1, default=str)
    write_markdown(out / f"{_NAME.value}.md", runs, command)


if __name__ == "__main__":
    app.run(main)
