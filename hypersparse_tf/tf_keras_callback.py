"""The tf_keras (Keras 2) face of the `ART` callback.

A tf_keras `fit` takes only `tf_keras.callbacks.Callback` objects, and a Keras
3 callback handed to it fails deep inside tf_keras. `ART.for_tf_keras()`
returns the object made here: a tf_keras callback that forwards every call to
the one `ART` object, which keeps the state, history and masks. tf_keras is
imported on first use only.
"""

import functools

from hypersparse_tf import prunable
from hypersparse_tf import regularizers


@functools.cache
def _callback_class():
    """The tf_keras Callback that forwards to an `ART`; built on first use."""
    import tf_keras

    class ARTForTfKeras(tf_keras.callbacks.Callback):
        """A tf_keras callback that runs an `ART` object (see `ART.for_tf_keras`).

        Args:
            art: `ART`. The callback whose logic and state are used.
        """

        def __init__(self, art):
            super().__init__()
            self.art = art

        def set_model(self, model):
            super().set_model(model)
            self.art.set_model(model)

        def set_params(self, params):
            super().set_params(params)
            self.art.set_params(params)

        def on_train_begin(self, logs=None):
            if not prunable.is_tf_keras(self.model):
                raise TypeError(
                    "`ART.for_tf_keras()` is for tf_keras models; model "
                    f"{self.model.name!r} is a Keras 3 model: pass the `ART` "
                    "object itself to its `fit`."
                )
            self.art.on_train_begin(logs)

        def on_epoch_begin(self, epoch, logs=None):
            self.art.on_epoch_begin(epoch, logs)

        def on_train_batch_begin(self, batch, logs=None):
            self.art.on_train_batch_begin(batch, logs)

        def on_train_batch_end(self, batch, logs=None):
            self.art.on_train_batch_end(batch, logs)

        def on_epoch_end(self, epoch, logs=None):
            self.art.on_epoch_end(epoch, logs)

        def on_train_end(self, logs=None):
            self.art.on_train_end(logs)

        def get_config(self):
            return self.art.get_config()

    return ARTForTfKeras


def art_for_tf_keras(art):
    """A `tf_keras.callbacks.Callback` that runs `art` (an `ART`)."""
    return _callback_class()(art)


class TfKerasFace:
    """What `ART` offers a tf_keras `fit`: `for_tf_keras()`, and a clear error
    when the `ART` object itself is handed to one."""

    def for_tf_keras(self):
        """This callback in a form a tf_keras (Keras 2) `fit` accepts.

        A tf_keras `fit` takes only `tf_keras.callbacks.Callback` objects. The
        object returned forwards every call to this `ART`, so `art.phase`,
        `art.history` and `art.masks` are read here as usual. Imports tf_keras;
        the same object is returned on every call.

        Returns:
            A `tf_keras.callbacks.Callback`.

        Example:

        >>> art = hypersparse_tf.ART(reg, eval_data=(x_train, y_train))
        >>> tf_keras_model.fit(x_train, y_train, epochs=1000,
        ...                    callbacks=[art.for_tf_keras()])
        >>> art.masks  # the fine-tuning mask
        """
        if getattr(self, "_tf_keras_callback", None) is None:
            regularizers.register_with_tf_keras()
            self._tf_keras_callback = art_for_tf_keras(self)
        return self._tf_keras_callback

    def _implements_train_batch_hooks(self):
        # tf_keras's CallbackList calls this on every callback it is given (a
        # Keras 3 callback has no such method): say what to do instead.
        raise TypeError(
            "hypersparse_tf.ART is a Keras 3 callback and this `fit` is tf_keras's "
            "(Keras 2). Pass `art.for_tf_keras()` in `callbacks` instead of `art`."
        )
