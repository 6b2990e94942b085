r"""The paper's protocol (ResNet-32 or VGG-19-BN on CIFAR-10) on any Keras backend.

The reference settings (`hypersparse_tf.reference`): warm-up 60 epochs,
`lambda_init=5e-6`, `eta=1.05`, fine-tuning 160 epochs, batch 64, SGD 0.1 with
momentum 0.9 and coupled weight decay 1e-4, PyTorch's BatchNorm and
initialization, pad-4 random crops and horizontal flips (done in NumPy), the
pruned copy scored on the augmented training data. Published (ResNet-32,
CIFAR-10): 94.22 / 92.69 / 89.35% at 90 / 98 / 99.5% sparsity.

Needs no TensorFlow: the JPEG archive in `../shared/data/` is decoded once with
Pillow into NumPy and cached as `.npy` (`--cache_dir`); batches come from a
`keras.utils.PyDataset`. Runs on the backend of `KERAS_BACKEND` (JAX on the GPU
machine). Progress goes to the log; every epoch is appended to `history.csv`
in `--output_dir`, with ART's state and the model backed up there, so a run
that is stopped (`--max_minutes`, or killed) goes on from its last epoch when
started again with the same flags. At the end (or at the time limit) it writes
`summary.md` (the table: dense accuracy at the end of warm-up, sparse accuracy
last and best over fine-tuning, against the published number), `summary.json`
and `history.png`.

The archive's JPEGs were saved at quality 75: accuracies compare between runs
on these files, not exactly with the published ones.

    KERAS_BACKEND=jax PYTHONPATH=. python3 benchmarks/paper_protocol.py \
        --prune_rate=0.9 --output_dir=benchmarks/results/paper_protocol_r32_90

A tiny CPU check: `--train_size=256 --test_size=128 --warmup_epochs=1
--finetune_epochs=1 --max_epochs=4 --width=4`.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import csv  # noqa: E402
import io  # noqa: E402
import json  # noqa: E402
import pathlib  # noqa: E402
import shlex  # noqa: E402
import sys  # noqa: E402
import tarfile  # noqa: E402
import time  # noqa: E402

import keras  # noqa: E402
import numpy as np  # noqa: E402
from absl import app  # noqa: E402
from absl import flags  # noqa: E402
from absl import logging  # noqa: E402

import hypersparse_tf  # noqa: E402
from hypersparse_tf import models  # noqa: E402
from hypersparse_tf import optimizers  # noqa: E402
from hypersparse_tf import reference  # noqa: E402

PUBLISHED = {  # ResNet-32 / CIFAR-10, the paper's table
    ("resnet32", 0.9): 94.22,
    ("resnet32", 0.98): 92.69,
    ("resnet32", 0.995): 89.35,
}
_ROOT = pathlib.Path(__file__).resolve().parent.parent

_MODEL = flags.DEFINE_enum("model", "resnet32", ["resnet32", "vgg19_bn"], "Network.")
_RATE = flags.DEFINE_float("prune_rate", 0.9, "Sparsity kappa.")
_WIDTH = flags.DEFINE_integer(
    "width",
    32,
    "ResNet width, the filters of the stem and first stage (32: the reference's "
    "doubled ResNet-32, 1,855,584 prunable weights; 16: the standard one).",
)
_ARCHIVE = flags.DEFINE_string(
    "archive", str(_ROOT.parent / "shared" / "data" / "cifar10-jpeg.tar.gz"), "JPEGs."
)
_CACHE = flags.DEFINE_string("cache_dir", None, "Decoded .npy (default: next to out).")
_TRAIN_SIZE = flags.DEFINE_integer("train_size", None, "First N train images.")
_TEST_SIZE = flags.DEFINE_integer("test_size", None, "First N test images.")
_WARMUP = flags.DEFINE_integer("warmup_epochs", reference.WARMUP_EPOCHS, "Warm-up.")
_LAMBDA = flags.DEFINE_float("lambda_init", reference.LAMBDA_INIT, "lambda_init.")
_ETA = flags.DEFINE_float("eta", reference.ETA, "eta.")
_FINETUNE = flags.DEFINE_integer(
    "finetune_epochs", reference.FINETUNE_EPOCHS, "Fine-tuning epochs."
)
_BUDGET = flags.DEFINE_integer(
    "epoch_budget",
    None,
    "ART's `epoch_budget`: warm-up, ART and fine-tuning epochs together; ART "
    "ends at the latest when the fine-tuning epochs remain (default: none, as "
    "the paper).",
)
_MAX_EPOCHS = flags.DEFINE_integer("max_epochs", 1000, "Upper bound on epochs.")
_MAX_MINUTES = flags.DEFINE_float(
    "max_minutes", None, "Stop after the epoch that passes this wall-clock limit."
)
_BATCH = flags.DEFINE_integer("batch_size", reference.BATCH_SIZE, "Batch size.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed.")
_OUTPUT_DIR = flags.DEFINE_string(
    "output_dir", "benchmarks/results/paper_protocol", "Results and backups."
)

# --------------------------------------------------------------------- data


def load_cifar10(archive, cache_dir):
    """`(x_train, y_train, x_test, y_test)` uint8/int32 arrays, decoded from
    the JPEG archive with Pillow once and then read from `.npy` files."""
    cache = pathlib.Path(cache_dir)
    names = [cache / f"cifar10_{n}.npy" for n in ("xtr", "ytr", "xte", "yte")]
    if all(p.exists() for p in names):
        return tuple(np.load(p) for p in names)
    archive = pathlib.Path(archive)
    if not archive.exists():
        raise FileNotFoundError(
            f"Invalid value for --archive: {str(archive)!r} does not exist. "
            "Expected cifar10-jpeg.tar.gz (train/<class>/*.jpg, test/<class>/*.jpg)."
        )
    from PIL import Image

    found = {"train": [], "test": []}
    with tarfile.open(archive) as tar:
        for member in tar:
            parts = pathlib.PurePosixPath(member.name).parts
            if not member.isfile() or len(parts) < 3 or parts[-3] not in found:
                continue
            image = Image.open(io.BytesIO(tar.extractfile(member).read()))
            found[parts[-3]].append(
                (parts[-2], member.name, np.asarray(image.convert("RGB")))
            )
    classes = sorted({c for c, _, _ in found["train"]})
    arrays = []
    for split in ("train", "test"):
        items = sorted(found[split], key=lambda item: (item[0], item[1]))
        arrays.append(np.stack([image for _, _, image in items]).astype(np.uint8))
        arrays.append(np.array([classes.index(c) for c, _, _ in items], np.int32))
    cache.mkdir(parents=True, exist_ok=True)
    for path, array in zip(names, arrays, strict=True):
        np.save(path, array)
    return tuple(arrays)


def _subset(x, y, size, seed):
    if size is None or size >= len(x):
        return x, y
    order = np.random.default_rng(seed).permutation(len(x))[:size]
    return x[order], y[order]


class Batches(keras.utils.PyDataset):
    """Normalized batches, shuffled every epoch and, with `augment`, padded by
    4 (zeros), randomly cropped back to 32x32 and flipped, as the reference.

    The order and the crops are a function of `(seed, epoch, batch index)`
    alone, not of how many batches were drawn before: a run resumed at epoch
    `e` (the `DataEpoch` callback sets it) sees the batches an uninterrupted
    run sees at `e`."""

    def __init__(self, x, y, batch_size, mean, std, augment, seed, **kwargs):
        super().__init__(**kwargs)
        self.x, self.y = x, y
        self.batch_size, self.augment = batch_size, augment
        self.mean, self.std = mean, std
        self.seed = seed
        self.order = np.arange(len(x))
        self.epoch = None
        self.set_epoch(0)

    def set_epoch(self, epoch):
        if self.augment and epoch != self.epoch:
            rng = np.random.default_rng((self.seed, epoch))
            self.order = rng.permutation(len(self.x))
        self.epoch = epoch

    def __len__(self):
        return -(-len(self.x) // self.batch_size)

    def __getitem__(self, index):
        rows = self.order[index * self.batch_size : (index + 1) * self.batch_size]
        images = self.x[rows]
        if self.augment:
            rng = np.random.default_rng((self.seed, self.epoch, index))
            padded = np.pad(images, ((0, 0), (4, 4), (4, 4), (0, 0)))
            size = images.shape[1]
            out = np.empty_like(images)
            tops = rng.integers(0, 9, len(rows))
            lefts = rng.integers(0, 9, len(rows))
            flips = rng.random(len(rows)) < 0.5
            for i, (top, left, flip) in enumerate(zip(tops, lefts, flips, strict=True)):
                crop = padded[i, top : top + size, left : left + size]
                out[i] = crop[:, ::-1] if flip else crop
            images = out
        images = (images.astype(np.float32) / 255.0 - self.mean) / self.std
        return images, self.y[rows]


# ------------------------------------------------------------------ callbacks


class DataEpoch(keras.callbacks.Callback):
    """Tells the augmented `Batches` which epoch starts (first among the
    callbacks, so ART's end-of-epoch scoring sees the same epoch)."""

    def __init__(self, *batches):
        super().__init__()
        self.batches = batches

    def on_epoch_begin(self, epoch, logs=None):
        for batches in self.batches:
            batches.set_epoch(epoch)


class TimeLimit(Exception):
    """Raised after the epoch that passes `--max_minutes`."""


class EpochLog(keras.callbacks.Callback):
    """Test accuracy, ART's phase and coefficient per epoch, appended to
    `history.csv`; stops after the epoch that passes the time limit."""

    def __init__(self, art, test, path, max_minutes):
        super().__init__()
        self.art, self.test, self.path = art, test, pathlib.Path(path)
        self.limit = None if max_minutes is None else 60 * max_minutes
        self.start = time.perf_counter()
        self.epoch_start = None

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch_start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        _, test_accuracy = self.model.evaluate(self.test, verbose=0)
        last = self.art.history[-1] if self.art.history else {}
        row = {
            "epoch": epoch,
            "phase": last.get("phase", self.art.phase),
            "coefficient": last.get("coefficient", 0.0),
            "sparsity": last.get("sparsity", 0.0),
            "loss": logs.get("loss"),
            "train_accuracy": logs.get("accuracy"),
            "pruned_accuracy": last.get("pruned_accuracy"),
            "test_accuracy": test_accuracy,
            "epoch_seconds": time.perf_counter() - self.epoch_start,
        }
        new = not self.path.exists()
        with self.path.open("a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(row))
            if new:
                writer.writeheader()
            writer.writerow(row)
        logging.info(
            "epoch %d %s: loss %.4f, test %.4f, sparsity %.4f, %.0f s",
            epoch,
            row["phase"],
            row["loss"] or float("nan"),
            test_accuracy,
            row["sparsity"],
            row["epoch_seconds"],
        )
        if self.limit is not None and time.perf_counter() - self.start > self.limit:
            # Leaves `fit` as a kill would: ART keeps its backup (it deletes
            # it when `fit` ends normally).
            raise TimeLimit(f"time limit reached after epoch {epoch}")


# -------------------------------------------------------------------- report


def read_history(path):
    with pathlib.Path(path).open() as f:
        rows = list(csv.DictReader(f))
    by_epoch = {}
    for row in rows:  # a resumed run may repeat an epoch: the last one counts
        by_epoch[int(row["epoch"])] = row
    return [by_epoch[e] for e in sorted(by_epoch)]


def summarize(history, art_phase, model, rate, backend, step_seconds):
    def value(row, key):
        return float(row[key]) if row.get(key) not in (None, "") else None

    warmup = [r for r in history if r["phase"] == "warmup"]
    finetune = [r for r in history if r["phase"] in ("finetune", "done")]
    summary = {
        "model": model,
        "prune_rate": rate,
        "backend": backend,
        "phase": art_phase,
        "epochs": len(history),
        "dense_test_accuracy": value(warmup[-1], "test_accuracy") if warmup else None,
        "art_epochs": sum(r["phase"] == "art" for r in history),
        "finetune_epochs": len(finetune),
        "sparse_test_accuracy_last": value(finetune[-1], "test_accuracy")
        if finetune
        else None,
        "sparse_test_accuracy_best": max(value(r, "test_accuracy") for r in finetune)
        if finetune
        else None,
        "sparsity": value(history[-1], "sparsity") if history else None,
        "median_epoch_seconds": float(
            np.median([value(r, "epoch_seconds") for r in history])
        )
        if history
        else None,
        "step_seconds": step_seconds,
        "published": PUBLISHED.get((model, rate)),
    }
    return summary


def write_summary(out, summary):
    def percent(v):
        return "-" if v is None else f"{100 * v:.2f}%"

    published = summary["published"]
    published = "-" if published is None else f"{published:.2f}%"
    step = summary["step_seconds"]
    step = "-" if step is None else f"{step:.3f}"
    epoch = summary["median_epoch_seconds"]
    epoch = "-" if epoch is None else f"{epoch:.1f}"
    lines = [
        f"# The paper's protocol: {summary['model']} at {summary['prune_rate']:.1%}",
        "",
        f"{summary['prunable_weights']:,} prunable weights. "
        f"Backend {summary['backend']}; {summary['epochs']} epochs run, phase "
        f"{summary['phase']!r}; median epoch {epoch} s "
        f"({summary['batches_per_epoch']} training batches of "
        f"{summary['batch_size']}: {step} s per batch, the "
        "epoch's evaluations included).",
        "",
        f"    {summary['command']}",
        "",
        "| quantity | value |",
        "|---|---|",
        "| dense test accuracy (end of warm-up) | "
        f"{percent(summary['dense_test_accuracy'])} |",
        f"| ART epochs | {summary['art_epochs']} |",
        f"| fine-tuning epochs run | {summary['finetune_epochs']} |",
        f"| sparsity | {percent(summary['sparsity'])} |",
        "| sparse test accuracy, last epoch | "
        f"{percent(summary['sparse_test_accuracy_last'])} |",
        f"| sparse test accuracy, best fine-tuning epoch | "
        f"{percent(summary['sparse_test_accuracy_best'])} |",
        f"| published (the paper) | {published} |",
    ]
    (out / "summary.md").write_text("\n".join(lines) + "\n")
    (out / "summary.json").write_text(json.dumps(summary, indent=1))


def write_plot(out, history):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [int(r["epoch"]) for r in history]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(8, 6), sharex=True)
    top.plot(epochs, [100 * float(r["test_accuracy"]) for r in history], label="test")
    top.set_ylabel("accuracy (%)")
    top.legend()
    bottom.plot(epochs, [float(r["sparsity"]) for r in history], label="sparsity")
    bottom.set_ylabel("sparsity")
    bottom.set_xlabel("epoch")
    fig.tight_layout()
    fig.savefig(out / "history.png", dpi=100)
    plt.close(fig)


# ---------------------------------------------------------------------- main


def build(model_name, width, seed):
    keras.utils.set_random_seed(seed)
    settings = reference.model_settings(model_name)
    if model_name == "resnet32":
        return models.resnet(32, 10, (32, 32, 3), width=width, **settings)
    return models.vgg19_bn(10, (32, 32, 3), **settings)


def main(argv):
    del argv
    out = pathlib.Path(_OUTPUT_DIR.value)
    out.mkdir(parents=True, exist_ok=True)
    backend = keras.backend.backend()
    logging.info("Keras %s on %s", keras.__version__, backend)
    if backend == "jax":
        import jax

        logging.info("JAX devices: %s", jax.devices())
    data = load_cifar10(_ARCHIVE.value, _CACHE.value or out / "cache")
    x_train, y_train = _subset(data[0], data[1], _TRAIN_SIZE.value, _SEED.value)
    x_test, y_test = _subset(data[2], data[3], _TEST_SIZE.value, _SEED.value)
    mean = x_train.reshape(-1, 3).mean(0) / 255.0
    std = x_train.reshape(-1, 3).std(0) / 255.0
    batch = _BATCH.value
    train = Batches(x_train, y_train, batch, mean, std, True, _SEED.value)
    # As the reference: the pruned copy is scored on augmented training data.
    train_eval = Batches(x_train, y_train, 256, mean, std, True, _SEED.value + 1)
    test = Batches(x_test, y_test, 256, mean, std, False, 0)

    finished = False
    if (out / "history.csv").exists():
        done = read_history(out / "history.csv")
        finished = bool(done) and done[-1]["phase"] == "done"
    model = build(_MODEL.value, _WIDTH.value, _SEED.value)
    settings = reference.training_settings()
    model.compile(
        optimizer=optimizers.sgd(
            settings["learning_rate"],
            settings["momentum"],
            settings["weight_decay"],
            settings["weight_decay_mode"],
        ),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    reg = hypersparse_tf.HyperSparse(_RATE.value)
    hypersparse_tf.attach(model, reg)
    art = hypersparse_tf.ART(
        reg,
        train_eval,
        **dict(
            reference.art_settings(),
            warmup_epochs=_WARMUP.value,
            lambda_init=_LAMBDA.value,
            eta=_ETA.value,
            finetune_epochs=_FINETUNE.value,
        ),
        epoch_budget=_BUDGET.value,
        backup_dir=str(out / "art_backup"),
        verbose=1,
    )
    log = EpochLog(art, test, out / "history.csv", _MAX_MINUTES.value)
    start = time.perf_counter()
    if finished:
        logging.info("%s holds a finished run: the summary only.", out)
    else:
        try:
            model.fit(
                train,
                epochs=_MAX_EPOCHS.value,
                # `Batches` shuffles by (seed, epoch); Keras' own shuffle of
                # the batch order would draw from Python's `random`, whose
                # state a resumed process does not have.
                shuffle=False,
                # `art` writes its backup (model, optimizer, ART's state)
                # before `log` may stop the run.
                callbacks=[DataEpoch(train, train_eval), art, log],
                verbose=0,
            )
        except TimeLimit as limit:
            logging.info("%s; the next call goes on from the backup.", limit)
    elapsed = time.perf_counter() - start
    history = read_history(out / "history.csv")
    step_seconds = None
    if history:
        step_seconds = float(
            np.median([float(r["epoch_seconds"]) for r in history]) / len(train)
        )
    summary = summarize(
        history, art.phase, _MODEL.value, _RATE.value, backend, step_seconds
    )
    summary["batches_per_epoch"] = len(train)
    summary["batch_size"] = batch
    summary["prunable_weights"] = sum(
        int(np.prod(w.shape)) for w in hypersparse_tf.prunable_weights(model).values()
    )
    summary["wall_seconds_this_call"] = elapsed
    summary["command"] = (
        f"KERAS_BACKEND={backend} PYTHONPATH=. python3 benchmarks/paper_protocol.py "
        + shlex.join(sys.argv[1:])
    )
    write_summary(out, summary)
    write_plot(out, history)
    logging.info("summary: %s", json.dumps(summary))


if __name__ == "__main__":
    app.run(main)
