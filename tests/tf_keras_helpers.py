"""tf_keras (Keras 2) twins of the Keras 3 test models: same layers, same names.

The weights of a twin are copied from its Keras 3 model layer by layer, so a
test can compare both flavours on exactly the same numbers.
"""

import numpy as np
import tf_keras

import hypersparse_tf
from tests.art_helpers import art_setup
from tests.art_helpers import digits
from tests.art_helpers import mlp
from tests.conftest import mixed_model


def copy_weights_by_layer_name(source, target):
    """Copies every layer's weights from `source` to the layer of the same name
    in `target` (the two may be of different Keras flavours)."""
    for layer in source.layers:
        if layer.weights:
            target.get_layer(layer.name).set_weights(layer.get_weights())
    return target


def tf_keras_mixed_model(seed=0, kernel_regularizer=None):
    """The tf_keras twin of `tests.conftest.mixed_model`, same weights."""
    inputs = tf_keras.Input((8, 8, 3))
    x = tf_keras.layers.Conv2D(
        4, 3, name="conv", kernel_regularizer=kernel_regularizer
    )(inputs)
    x = tf_keras.layers.BatchNormalization(name="bn")(x)
    x = tf_keras.layers.ReLU()(x)
    x = tf_keras.layers.DepthwiseConv2D(3, name="depthwise")(x)
    x = tf_keras.layers.SeparableConv2D(5, 3, name="separable")(x)
    x = tf_keras.layers.Flatten()(x)
    outputs = tf_keras.layers.Dense(3, name="dense")(x)
    model = tf_keras.Model(inputs, outputs, name="mixed")
    return copy_weights_by_layer_name(mixed_model(seed), model)


def tf_keras_mlp(seed=0):
    """The tf_keras twin of `tests.art_helpers.mlp`, same weights."""
    model = tf_keras.Sequential(
        [
            tf_keras.Input((64,)),
            tf_keras.layers.Dense(64, activation="relu", name="d1"),
            tf_keras.layers.Dense(32, activation="relu", name="d2"),
            tf_keras.layers.Dense(10, activation="softmax", name="out"),
        ],
        name="mlp",
    )
    return copy_weights_by_layer_name(mlp(seed), model)


def tf_keras_compiled(model, metrics=("accuracy",)):
    model.compile(
        optimizer=tf_keras.optimizers.SGD(0.1, momentum=0.9),
        loss="sparse_categorical_crossentropy",
        metrics=list(metrics),
    )
    return model


def tf_keras_art_setup(prune_rate=0.9, regularizer=None, seed=0, **kwargs):
    """`tests.art_helpers.art_setup` on the tf_keras twin of the MLP."""
    model = tf_keras_compiled(tf_keras_mlp(seed))
    return art_setup(prune_rate, regularizer, seed, model=model, **kwargs)


def tf_keras_fit(model, art, epochs=200, callbacks=(), **kwargs):
    """`fit` on the digits training set with `art.for_tf_keras()` first."""
    x_train, _, y_train, _ = digits()
    return model.fit(
        x_train,
        y_train,
        batch_size=64,
        epochs=epochs,
        shuffle=False,
        callbacks=[art.for_tf_keras(), *callbacks],
        verbose=0,
        **kwargs,
    )


def masked_weights_are_zero(model, masks):
    """Whether every prunable weight outside its mask is exactly zero."""
    return all(
        np.all(weight.numpy()[~masks[key]] == 0)
        for key, weight in hypersparse_tf.prunable_weights(model).items()
    )
