r"""ART on several machines: `MultiWorkerMirroredStrategy`, fault tolerant.

Keras 3's `fit` does not run under `MultiWorkerMirroredStrategy` (it fails
with "Attempt to convert a value (PerReplica...)", keras-team/keras#20585;
seen here with Keras 3.15 and TensorFlow 2.21), so a multi-worker run uses the
tf_keras flavour of the model, `art.for_tf_keras()` and tf_keras's
`BackupAndRestore`, the callback that makes a multi-worker `fit` survive a
worker's restart.

Start one process per worker, each with the same `--workers` and its own
`--index` (here two workers on one machine):

    python3 examples/multi_worker.py --workers=127.0.0.1:12345,127.0.0.1:12346 \
        --index=0 --output_dir=runs/mw &
    python3 examples/multi_worker.py --workers=127.0.0.1:12345,127.0.0.1:12346 \
        --index=1 --output_dir=runs/mw

If a worker dies, stop the others and start them all again with the same
flags: tf_keras's `BackupAndRestore` (in `<output_dir>/keras_backup`) and
ART's own backup (one folder per worker, `<output_dir>/art_backup/worker<i>`;
every worker holds the same state, and a folder of its own needs no shared
file system) resume the run where the last epoch ended. Each worker writes
`worker<i>.json` (ART's history, termination epoch, the regularizer's
statistics and coefficient) and `masks<i>.npz`.

The model is LeNet-300-100 on the embedded digits; ART's settings are the
short ones of the tests.
"""

import json
import os

from absl import app
from absl import flags

_WORKERS = flags.DEFINE_list(
    "workers", None, "host:port of every worker, the same list for all.", required=True
)
_INDEX = flags.DEFINE_integer("index", None, "This worker's index.", required=True)
_OUTPUT_DIR = flags.DEFINE_string("output_dir", "runs/multi_worker", "Run folder.")
_PRUNE_RATE = flags.DEFINE_float("prune_rate", 0.9, "Fraction of weights to remove.")
_MAX_EPOCHS = flags.DEFINE_integer("max_epochs", 200, "Upper bound on epochs.")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    if not 0 <= _INDEX.value < len(_WORKERS.value):
        raise app.UsageError(
            f"--index={_INDEX.value} must name one of the {len(_WORKERS.value)} "
            "--workers."
        )
    # TensorFlow reads the cluster from TF_CONFIG, set before it starts.
    os.environ["TF_CONFIG"] = json.dumps(
        {
            "cluster": {"worker": _WORKERS.value},
            "task": {"type": "worker", "index": _INDEX.value},
        }
    )
    import numpy as np
    import tensorflow as tf

    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    import tf_keras

    import hypersparse_tf

    data = hypersparse_tf.datasets.load("digits")
    x = data.x_train.astype("float32") / 255.0
    y = data.y_train
    out = _OUTPUT_DIR.value
    os.makedirs(out, exist_ok=True)
    with strategy.scope():
        tf_keras.utils.set_random_seed(0)
        model = hypersparse_tf.models.lenet_300_100(10, x.shape[1:], flavour="tf_keras")
        model.compile(
            optimizer=tf_keras.optimizers.SGD(0.1, momentum=0.9),
            loss=tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            metrics=["accuracy"],
        )
        regularizer = hypersparse_tf.HyperSparse(_PRUNE_RATE.value)
        hypersparse_tf.attach(model, regularizer)
    art = hypersparse_tf.ART(
        regularizer,
        (x, y),
        warmup_epochs=3,
        lambda_init=3e-4,
        eta=1.3,
        finetune_epochs=4,
        backup_dir=os.path.join(out, "art_backup", f"worker{_INDEX.value}"),
        verbose=0,
    )
    history = model.fit(
        x,
        y,
        batch_size=64 * len(_WORKERS.value),  # the global batch
        epochs=_MAX_EPOCHS.value,
        shuffle=False,
        callbacks=[
            art.for_tf_keras(),
            tf_keras.callbacks.BackupAndRestore(os.path.join(out, "keras_backup")),
        ],
        verbose=0,
    )
    masks = art.masks or {}
    np.savez(os.path.join(out, f"masks{_INDEX.value}.npz"), **masks)
    report = {
        "phase": art.phase,
        "termination_epoch": art.termination_epoch,
        "history": art.history,
        "epochs_this_process": len(history.history["loss"]),
        "sparsity": hypersparse_tf.sparsity(model),
        "threshold": float(regularizer.threshold.numpy()),
        "scale": float(regularizer.scale.numpy()),
        "ratio": float(regularizer.ratio.numpy()),
        "coefficient": float(regularizer.coefficient.numpy()),
        "mask_variables": {
            key: int(np.count_nonzero(variable.numpy()))
            for key, variable in art.mask_variables().items()
        },
    }
    with open(os.path.join(out, f"worker{_INDEX.value}.json"), "w") as f:
        json.dump(report, f)
    print(
        f"worker {_INDEX.value}: phase {art.phase}, sparsity {report['sparsity']:.4f}"
    )


if __name__ == "__main__":
    app.run(main)
