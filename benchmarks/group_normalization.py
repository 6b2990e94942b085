r"""Channel HyperSparse with and without normalizing group norms by size.

A channel's magnitude is the L2 norm of its weights; with
`normalize_groups=True` it is divided by `sqrt(group size)` (the RMS), so that
the 16 narrow channels of the small CNN's first convolution (9 weights each)
and the 32 wide ones of its second (144 weights each) compete on one scale.
This runs the default main job (digits, small CNN) with `structure="channel"`
both ways, over rates and seeds, each run in its own process, and writes what
each choice removes (channels per layer, parameters) and what it keeps
(accuracy, the TFLite Micro model and arena).

    PYTHONPATH=. python3 benchmarks/group_normalization.py

Results: `benchmarks/results/group_normalization.md` and `.json`.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import datetime  # noqa: E402
import json  # noqa: E402
import pathlib  # noqa: E402
import shlex  # noqa: E402
import sys  # noqa: E402

import numpy as np  # noqa: E402
from absl import app  # noqa: E402
from absl import flags  # noqa: E402

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from child_runs import run_in_child  # noqa: E402

_RATES = flags.DEFINE_list("rates", ["0.5", "0.75"], "Fractions of channels.")
_SEEDS = flags.DEFINE_list("seeds", ["0", "1", "2"], "Seeds.")
_OUTPUT_DIR = flags.DEFINE_string(
    "output_dir", "benchmarks/results", "Where the results are written."
)

_RUN = r"""
import json, sys
import numpy as np
from hypersparse_tf import experiment
seed, rate, normalize = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3] == "1"
config = experiment.Config(
    seed=seed, prune_rate=rate, structure="channel", normalize_groups=normalize
)
summary = experiment.train_and_evaluate(config, sys.argv[4], verbose=0)
masks = np.load(sys.argv[4] + "/masks.npz")
summary["channels_removed"] = {
    k: int((~masks[k].reshape(-1, masks[k].shape[-1]).any(axis=0)).sum())
    for k in masks.files
    if k.endswith("kernel")  # not the BatchNorm masks of the channels
}
report = summary.pop("deployment_report")
rows = {r["artifact"]: r for r in report["artifacts"]}
summary["params_dense"] = rows["micro_int8"]["nonzero_parameters"]
summary["params_shrunk"] = rows["micro_int8_shrunk"]["nonzero_parameters"]
summary["micro_dense_bytes"] = rows["micro_int8"]["bytes"]
summary["micro_dense_arena"] = rows["micro_int8"]["arena_bytes"]
print("SUMMARY " + json.dumps(summary, default=str))
"""


def run(seed, rate, normalize):
    return run_in_child(_RUN, [seed, rate, int(normalize)])


def _cell(values, fmt="{:.2f}"):
    values = np.asarray(values, np.float64)
    spread = values.std(ddof=1) if len(values) > 1 else 0.0
    return f"{fmt.format(values.mean())} ± {fmt.format(spread)}"


def write_markdown(path, runs, command):
    lines = [
        "# Channel HyperSparse: group norms normalized by size or not",
        "",
        f"Written by `benchmarks/group_normalization.py` on {datetime.date.today()}"
        f", {os.cpu_count()} CPU cores. Command:",
        "",
        "    " + " ".join(shlex.quote(a) for a in command),
        "",
        "The default main job (digits, small CNN: 16 channels of 9 weights, 32 of "
        "144; the classifier's units are the classes and stay) with "
        "`structure='channel'`; mean ± std over the seeds. Channels removed per "
        "layer; parameters: non-zero parameters of the int8 TFLite Micro model "
        "before and after `shrink`.",
        "",
        "| rate | normalize_groups | ART epochs | sparse test % | micro int8 test % "
        "| channels removed block1 / block2 "
        "| micro non-zero params (shrunk / before shrink) "
        "| micro bytes (shrunk / unshrunk) | arena (shrunk / unshrunk) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for rate in sorted({r["rate"] for r in runs}):
        for normalize in (True, False):
            group = [
                r for r in runs if r["rate"] == rate and r["normalize"] == normalize
            ]
            if not group:
                continue
            removed = [
                (
                    r["channels_removed"]["block1_conv/kernel"],
                    r["channels_removed"]["block2_conv/kernel"],
                )
                for r in group
            ]
            epochs = _cell([r["art_epochs"] for r in group], "{:.1f}")
            lines.append(
                f"| {rate:g} | {normalize} | {epochs} "
                f"| {_cell([100 * r['sparse_test_accuracy'] for r in group])} "
                f"| {_cell([100 * r['micro_test_accuracy'] for r in group])} "
                f"| {' '.join(f'{a}/{b}' for a, b in removed)} "
                f"| {_cell([r['params_shrunk'] for r in group], '{:.0f}')} / "
                f"{group[0]['params_dense']} "
                f"| {_cell([r['micro_bytes'] for r in group], '{:.0f}')} / "
                f"{group[0]['micro_dense_bytes']} "
                f"| {_cell([r['micro_arena_bytes'] for r in group], '{:.0f}')} / "
                f"{group[0]['micro_dense_arena']} |"
            )
    lines.append("")
    pathlib.Path(path).write_text("\n".join(lines))


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    runs = []
    for rate in (float(r) for r in _RATES.value):
        for normalize in (True, False):
            for seed in (int(s) for s in _SEEDS.value):
                summary = run(seed, rate, normalize)
                summary.update(seed=seed, rate=rate, normalize=normalize)
                summary.pop("config", None)
                runs.append(summary)
                print(f"rate {rate} normalize {normalize} seed {seed}", flush=True)
    out = pathlib.Path(_OUTPUT_DIR.value)
    out.mkdir(parents=True, exist_ok=True)
    command = ["PYTHONPATH=.", "python3", "benchmarks/group_normalization.py"]
    command += sys.argv[1:]
    with open(out / "group_normalization.json", "w") as f:
        json.dump(dict(command=command, runs=runs), f, indent=1, default=str)
    write_markdown(out / "group_normalization.md", runs, command)


if __name__ == "__main__":
    app.run(main)
