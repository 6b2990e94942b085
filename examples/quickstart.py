r"""HyperSparse + ART on scikit-learn digits, end to end, in about a minute.

Trains a small MLP on the embedded digits data with Adaptive Regularized
Training, then compares its test accuracy with a dense model trained for the
same number of epochs. Run from the repository root:

    python examples/quickstart.py --prune_rate=0.9
"""

import time

from absl import app
from absl import flags

FLAGS = flags.FLAGS
flags.DEFINE_float("prune_rate", 0.9, "Fraction of the kernel weights to remove.")
flags.DEFINE_integer("warmup_epochs", 10, "Dense epochs before ART.")
flags.DEFINE_float("lambda_init", 1e-4, "Coefficient of the first ART epoch.")
flags.DEFINE_float("eta", 1.1, "Growth of the coefficient per ART epoch.")
flags.DEFINE_integer("finetune_epochs", 20, "Epochs of fine-tuning with the mask.")
flags.DEFINE_integer("max_epochs", 300, "Upper bound on all epochs together.")
flags.DEFINE_integer("seed", 0, "Random seed.")


def make_model(seed):
    import keras

    keras.utils.set_random_seed(seed)
    model = keras.Sequential(
        [
            keras.Input((64,)),
            keras.layers.Dense(64, activation="relu", name="dense_1"),
            keras.layers.Dense(32, activation="relu", name="dense_2"),
            keras.layers.Dense(10, activation="softmax", name="logits"),
        ],
        name="digits_mlp",
    )
    model.compile(
        optimizer=keras.optimizers.SGD(0.1, momentum=0.9),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    return model


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    import numpy as np
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    import hypersparse_tf

    data = load_digits()
    x = (data.data / 16.0).astype("float32")
    x_train, x_test, y_train, y_test = train_test_split(
        x, data.target, test_size=0.2, random_state=0, stratify=data.target
    )
    start = time.perf_counter()
    model = make_model(FLAGS.seed)
    regularizer = hypersparse_tf.HyperSparse(prune_rate=FLAGS.prune_rate)
    hypersparse_tf.attach(model, regularizer)
    art = hypersparse_tf.ART(
        regularizer,
        eval_data=(x_train, y_train),
        warmup_epochs=FLAGS.warmup_epochs,
        lambda_init=FLAGS.lambda_init,
        eta=FLAGS.eta,
        finetune_epochs=FLAGS.finetune_epochs,
    )
    model.fit(
        x_train,
        y_train,
        batch_size=64,
        epochs=FLAGS.max_epochs,
        callbacks=[art],
        verbose=0,
    )
    sparse_accuracy = model.evaluate(x_test, y_test, verbose=0)[1]
    epochs = len(art.history)

    dense = make_model(FLAGS.seed)
    dense.fit(x_train, y_train, batch_size=64, epochs=epochs, verbose=0)
    dense_accuracy = dense.evaluate(x_test, y_test, verbose=0)[1]

    print()
    print(hypersparse_tf.sparsity_report(model))
    print()
    art_epochs = art.art_epochs_done
    print(
        f"phase: {art.phase}; ART epochs to termination: {art_epochs}; "
        f"total epochs: {epochs}; best candidate from epoch "
        f"{art.best_candidate_epoch}"
    )
    print(f"test accuracy, dense model ({epochs} epochs): {dense_accuracy:.4f}")
    print(
        f"test accuracy, sparse model ({hypersparse_tf.sparsity(model):.2%} of "
        f"kernel weights zero): {sparse_accuracy:.4f}"
    )
    kernels = hypersparse_tf.prunable_weights(model).values()
    nonzero = sum(int(np.count_nonzero(w.numpy())) for w in kernels)
    print(f"non-zero kernel weights: {nonzero}")
    print(f"wall time: {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    app.run(main)
