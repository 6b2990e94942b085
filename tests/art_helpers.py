"""A small ART set-up on scikit-learn digits, shared by the ART tests."""

import keras
import numpy as np
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

import hypersparse_tf
from tests.conftest import twin


def digits():
    data = load_digits()
    x = (data.data / 16.0).astype("float32")
    return train_test_split(
        x, data.target, test_size=0.2, random_state=0, stratify=data.target
    )


def mlp(seed=0, module=keras):
    """A 64-32-10 MLP for digits, in Keras 3 or as its tf_keras twin."""

    def build(k):
        return k.Sequential(
            [
                k.Input((64,)),
                k.layers.Dense(64, activation="relu", name="d1"),
                k.layers.Dense(32, activation="relu", name="d2"),
                k.layers.Dense(10, activation="softmax", name="out"),
            ],
            name="mlp",
        )

    return twin(build, seed, module)


def bn_mlp(seed=0, module=keras):
    """Dense -> BatchNorm -> ReLU -> Dense, compiled, for the BatchNorm tests."""

    def build(k):
        inputs = k.Input((64,))
        h = k.layers.Dense(32, name="d1")(inputs)
        h = k.layers.BatchNormalization(name="bn")(h)
        h = k.layers.ReLU()(h)
        outputs = k.layers.Dense(10, activation="softmax", name="out")(h)
        return k.Model(inputs, outputs)

    return compiled(twin(build, seed, module))


def compiled(model, metrics=("accuracy",)):
    """Compiled with SGD(0.1, momentum 0.9) in the model's own Keras."""
    k = keras
    if hypersparse_tf.prunable.is_tf_keras(model):
        import tf_keras as k
    model.compile(
        optimizer=k.optimizers.SGD(0.1, momentum=0.9),
        loss="sparse_categorical_crossentropy",
        metrics=list(metrics),
    )
    return model


FAST = dict(warmup_epochs=3, lambda_init=3e-4, eta=1.3, finetune_epochs=4, verbose=0)


def art_setup(prune_rate=0.9, regularizer=None, seed=0, model=None, **kwargs):
    """Model, regularizer and ART callback; ART settings default to `FAST`.

    `model` defaults to the compiled Keras 3 MLP of `seed`.
    """
    x_train, _, y_train, _ = digits()
    model = model if model is not None else compiled(mlp(seed))
    reg = regularizer or hypersparse_tf.HyperSparse(prune_rate)
    hypersparse_tf.attach(model, reg)
    settings = dict(FAST, **kwargs)
    if not isinstance(reg, hypersparse_tf.HyperSparse):
        settings.setdefault("prune_rate", prune_rate)
    art = hypersparse_tf.ART(reg, (x_train, y_train), **settings)
    return model, reg, art


def fit_digits(model, art, epochs=200, callbacks=(), **kwargs):
    """`model.fit` on the digits training split: batch 64, no shuffle, `art`
    first among the callbacks."""
    x_train, _, y_train, _ = digits()
    return model.fit(
        x_train,
        y_train,
        batch_size=64,
        epochs=epochs,
        shuffle=False,
        callbacks=[art, *callbacks],
        verbose=0,
        **kwargs,
    )


def interrupter(at_epoch, module=keras):
    """A callback of `module`'s Keras (Keras 3 or tf_keras) that raises
    `RuntimeError("interrupted")` when epoch `at_epoch` begins."""

    class Interrupt(module.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            if epoch == at_epoch:
                raise RuntimeError("interrupted")

    return Interrupt()


def num_kernel_weights(model):
    return sum(
        int(np.prod(w.shape)) for w in hypersparse_tf.prunable_weights(model).values()
    )
