"""The regularizers' and ART's own variables in a model's state, on every
Keras backend.

Under TensorFlow a compiled train step reads any variable it touches. JAX's
train step is a pure function of the model's state: a variable that is not
part of it (a regularizer's coefficient, its statistics, a mask) is read once,
when the step is traced, and frozen into it as a constant. So on the other
backends `attach` hangs these variables on the model, in a layer of their own
that Keras tracks like any sublayer (its variables join
`model.non_trainable_variables`, which the step takes and gives back) but that
saves nothing: a `.keras` file keeps the model's own weights only, and loads
into a fresh model with or without the regularizer attached. A `Sequential`
model's sublayers are its stack, so there the holder hangs on the stack's
`InputLayer` instead.
"""

import keras

from hypersparse_tf import _keras_compat


class StateHolder(keras.layers.Layer):
    """A layer that holds existing variables in a model's state and saves
    none of them."""

    def __init__(self, variables, **kwargs):
        super().__init__(trainable=False, **kwargs)
        self.held = list(variables)
        self.built = True

    def call(self, inputs):  # pragma: no cover - never called
        return inputs

    def save_own_variables(self, store):
        """Saves nothing: the state is rebuilt by `attach` and `ART`."""

    def load_own_variables(self, store):
        """Loads nothing (see `save_own_variables`)."""


def is_tensorflow():
    """Whether Keras runs on TensorFlow (the backend that keeps `tf.Variable`
    state and reads any variable a compiled step touches)."""
    return keras.backend.backend() == "tensorflow"


def needs_tracking():
    """Whether the running backend freezes untracked variables (all but
    TensorFlow)."""
    return not is_tensorflow()


def state_owner(model):
    """The layer of `model` whose sublayers hold the state: the model itself,
    or, for a `Sequential` (whose own sublayers are its stack of layers), the
    `InputLayer` at the bottom of its stack, whose variables the model's
    state includes and which `model.layers` and its `.keras` file leave
    out."""
    if isinstance(model, keras.Sequential):
        return _keras_compat.sequential_input_layer(model)
    return model


def check_trackable(model):
    """Raises unless `model` can hold state on this backend: on JAX and
    PyTorch, a `Sequential` model must be built (know its input shape)."""
    if not needs_tracking() or not isinstance(model, keras.Model):
        return
    if state_owner(model) is None:
        raise ValueError(
            "Invalid value for argument `model`: on the "
            f"{keras.backend.backend()} backend, a Sequential model must be "
            "built before hypersparse_tf can hold the regularizer's and the "
            "masks' state in it. Start it with `keras.Input(shape)` or call "
            "`model.build(input_shape)` first. "
            f"Received: model={model.name!r} (Sequential, not built)"
        )


def track(model, name, variables):
    """Puts `variables` in `model`'s state as the sublayer `name` (replacing
    an earlier holder of that name); a no-op under TensorFlow and for models
    that are not Keras 3 models."""
    if not needs_tracking() or not isinstance(model, keras.Model):
        return
    check_trackable(model)
    _keras_compat.set_sublayer(
        state_owner(model), name, StateHolder(variables, name=name)
    )
    held = {id(v) for v in model.non_trainable_variables}
    if not all(id(v) in held for v in variables):  # pragma: no cover
        raise RuntimeError(
            f"The state of {name!r} did not join model {model.name!r}'s "
            "variables: a Keras release changed how models track layers."
        )


def attribute_name(owner):
    """The model attribute that holds `owner`'s state."""
    return f"hypersparse_state_{owner.uid}"


def sync_for_callback(model):
    """Lets a callback read and change the model's variables in the middle of
    a JAX epoch: JAX's `fit` carries the state outside the variables between
    steps; `jax_state_sync` writes it back and makes the next step read the
    variables again (a no-op where it is in sync, and on other backends)."""
    sync = getattr(model, "jax_state_sync", None)
    if sync is not None:
        sync()
