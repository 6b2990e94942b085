r"""What each of the reference code's details does to ART, one at a time.

Runs ART + HyperSparse (`art_hs` of `compare_methods.py`) on one of its CPU
settings (default: the CIFAR-10 subset with ResNet-8) with the reference
code's details switched on one after the other, cumulatively:

1. `reference rule`: the reference's best-candidate rule (`utils/art.py`),
   Keras' defaults otherwise;
2. `+ augmented eval`: the pruned copy scored on the augmented, shuffled
   training data;
3. `+ coupled decay`: PyTorch's SGD (weight decay added to the gradient);
4. `+ PyTorch BatchNorm`: momentum 0.1 (Keras 0.9), epsilon 1e-5;
5. `+ init, padding`: the reference's initialization and symmetric stride-2
   padding (all of the reference, as the paper presets have it).

(The committed table also has a step 0, this library's earlier best-candidate
rule, run when it was still an option: commit 946d979. It was no better and
is gone.)

Each step trains its own warm-up (the weight decay, BatchNorm and
initialization change it), per seed. It writes `<name>.md` (the table: ART
epochs to termination, how many seeds the budget stopped, test accuracy after
the last epoch and the best over fine-tuning, the dense warm-up's test
accuracy), `<name>.png` and `<name>.json` under `--output_dir`.

    PYTHONPATH=. python3 benchmarks/reference_divergences.py
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import concurrent.futures  # noqa: E402
import dataclasses  # noqa: E402
import datetime  # noqa: E402
import json  # noqa: E402
import multiprocessing  # noqa: E402
import pathlib  # noqa: E402
import shlex  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
from absl import app  # noqa: E402
from absl import flags  # noqa: E402

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import compare_methods  # noqa: E402

STEPS = (
    ("reference rule", dict()),
    ("+ augmented eval", dict(eval_augmented=True)),
    ("+ coupled decay", dict(weight_decay_mode="coupled")),
    ("+ PyTorch BatchNorm", dict(reference_batchnorm=True)),
    ("+ init, padding", dict(reference_architecture=True)),
)

_SETTING = flags.DEFINE_enum(
    "setting", "cifar10_resnet", list(compare_methods.SETTINGS), "The CPU setting."
)
_SPARSITIES = flags.DEFINE_list("sparsities", ["0.9", "0.99"], "Target sparsities.")
_SEEDS = flags.DEFINE_list("seeds", ["0", "1"], "Seeds.")
_STEPS = flags.DEFINE_integer("steps", len(STEPS), "Run the first this many steps.")
_OUTPUT_DIR = flags.DEFINE_string(
    "output_dir", "benchmarks/results", "Where the results are written."
)
_NAME = flags.DEFINE_string("name", "reference_divergences", "Result file name.")
_OVERRIDES = {
    name: flags.DEFINE_integer(name, None, f"Override the setting's {name}.")
    for name in compare_methods.SIZE_OVERRIDES
}


def step_settings(base, count):
    """The cumulative settings of the first `count` steps."""
    settings, changes = [], {}
    for label, change in STEPS[:count]:
        changes = {**changes, **change}
        settings.append((label, dataclasses.replace(base, **changes)))
    return settings


def _job(args):
    index, label, setting, seed, sparsities, threads = args
    start = time.perf_counter()
    rows = compare_methods.run_job(setting, seed, sparsities, ["art_hs"], threads)
    return dict(
        step=index,
        label=label,
        seed=seed,
        rows=rows,
        seconds=time.perf_counter() - start,
    )


def _cell(values, scale=100, digits=2):
    values = [v for v in values if v is not None]
    if not values:
        return "-"
    spread = np.std(values, ddof=1) if len(values) > 1 else 0.0
    return f"{scale * np.mean(values):.{digits}f} ± {scale * spread:.{digits}f}"


def write_markdown(path, results, base, argv, elapsed):
    lines = [
        "# The reference code's details, one at a time",
        "",
        f"Written by `benchmarks/reference_divergences.py` on "
        f"{datetime.date.today()}; whole run {elapsed / 60:.1f} min wall on "
        f"{os.cpu_count()} CPU cores.",
        "",
        "Command (from the repository root):",
        "",
        "    " + " ".join(shlex.quote(a) for a in argv),
        "",
        f"Setting: {base.title}; train {base.train_size}, test {base.test_size}; "
        f"budget {base.budget_epochs} epochs = warm-up {base.warmup_epochs} + "
        f"ART and fine-tuning (>= {base.finetune_epochs}); lambda_init "
        f"{base.lambda_init}, eta {base.eta}; SGD lr {base.learning_rate}, "
        f"momentum {base.momentum}, weight decay {base.weight_decay}. Each step "
        "adds one of the reference's details to the step above it. Mean ± "
        "standard deviation over the seeds.",
        "",
        "| step | sparsity | ART epochs (seeds stopped by budget) | test accuracy "
        "% (last epoch) | best over fine-tuning % | warm-up test % |",
        "|---|---|---|---|---|---|",
    ]
    for index, (label, _) in enumerate(STEPS):
        jobs = [r for r in results if r["step"] == index]
        if not jobs:
            continue
        rows = [row for job in jobs for row in job["rows"]]
        warm = [r["test_accuracy"] for r in rows if r["method"] == "warmup"]
        for target in sorted({r["target"] for r in rows} - {0.0}):
            art = [r for r in rows if r["method"] == "art_hs" and r["target"] == target]
            epochs = np.mean([r["art_epochs"] for r in art])
            stopped = sum(bool(r["stopped_by_budget"]) for r in art)
            lines.append(
                f"| {index + 1}. {label} | {100 * target:g}% | {epochs:.1f} "
                f"({stopped}/{len(art)}) | "
                f"{_cell([r['test_accuracy'] for r in art])} | "
                f"{_cell([r['best_finetune_test_accuracy'] for r in art])} | "
                f"{_cell(warm)} |"
            )
    lines += [
        "",
        "Per-job wall time: "
        + ", ".join(
            f"step {job['step'] + 1} seed {job['seed']} {job['seconds'] / 60:.1f} min"
            for job in sorted(results, key=lambda j: (j["step"], j["seed"]))
        )
        + ".",
        "",
    ]
    pathlib.Path(path).write_text("\n".join(lines))


def write_plot(path, results):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [dict(row, step=job["step"]) for job in results for row in job["rows"]]
    targets = sorted({r["target"] for r in rows} - {0.0})
    steps = sorted({r["step"] for r in rows})
    fig, axes = plt.subplots(1, len(targets), figsize=(6 * len(targets), 4))
    axes = np.atleast_1d(axes)
    for ax, target in zip(axes, targets, strict=True):
        for key, marker in (
            ("test_accuracy", "o"),
            ("best_finetune_test_accuracy", "s"),
        ):
            means = [
                np.mean(
                    [
                        r[key]
                        for r in rows
                        if r["step"] == s
                        and r["method"] == "art_hs"
                        and r["target"] == target
                    ]
                )
                for s in steps
            ]
            ax.plot(steps, [100 * m for m in means], marker=marker, label=key)
        ax.set_xticks(steps, [STEPS[s][0] for s in steps], rotation=30, ha="right")
        ax.set_title(f"ART + HyperSparse at {100 * target:g}%")
        ax.set_ylabel("test accuracy %")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    base = dataclasses.replace(compare_methods.SETTINGS[_SETTING.value])
    for name, flag in _OVERRIDES.items():
        if flag.value is not None:
            setattr(base, name, flag.value)
    sparsities = [float(s) for s in _SPARSITIES.value]
    seeds = [int(s) for s in _SEEDS.value]
    if not 1 <= _STEPS.value <= len(STEPS):
        raise app.UsageError(f"--steps must lie in [1, {len(STEPS)}].")
    jobs = min(2, len(seeds))
    threads = max(1, (os.cpu_count() or 2) // jobs)
    tasks = [
        (index, label, setting, seed, sparsities, threads)
        for index, (label, setting) in enumerate(step_settings(base, _STEPS.value))
        for seed in seeds
    ]
    out = pathlib.Path(_OUTPUT_DIR.value)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    results = []
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(
        jobs, mp_context=context, max_tasks_per_child=1
    ) as pool:
        for result in pool.map(_job, tasks):
            results.append(result)
            print(f"step {result['step']} seed {result['seed']} done", flush=True)
    elapsed = time.perf_counter() - start
    command = ["PYTHONPATH=.", "python3", "benchmarks/reference_divergences.py"]
    command += argv[1:] if len(argv) > 1 else sys.argv[1:]
    report = dict(
        setting=dataclasses.asdict(base),
        steps=[label for label, _ in STEPS[: _STEPS.value]],
        command=command,
        elapsed_seconds=elapsed,
        jobs=results,
    )
    with open(out / f"{_NAME.value}.json", "w") as f:
        json.dump(report, f, indent=1)
    write_markdown(out / f"{_NAME.value}.md", results, base, command, elapsed)
    write_plot(out / f"{_NAME.value}.png", results)


if __name__ == "__main__":
    app.run(main)
