"""The tf_keras (Keras 2) face of the `ART` callback.

A tf_keras `fit` takes only `tf_keras.callbacks.Callback` objects, and a Keras
3 callback handed to it fails deep inside tf_keras. `ART.for_tf_keras()`
returns the object made here: a tf_keras callback that forwards every call to
the one `ART` object, which keeps the state, history and masks. tf_keras is
imported on first use only.
"""

import functools

from hypersparse_tf import prunable


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
