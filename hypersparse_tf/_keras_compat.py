"""Every use of a private Keras, tf_keras, tfmot or tensorflow-datasets attribute.

The rest of the package touches no underscore attribute of another library:
it calls the functions here. Each function says what it relies on, and
`tests/test_keras_compat.py` checks each one for its EFFECT (not only that the
attribute exists), so that a release that renames or stops reading one fails
those tests loudly instead of silently changing what this package does. Where
an attribute is missing at run time, the function raises `KerasInternalsError`
naming it; nothing falls back quietly.

Checked with Keras 3.15, tf_keras 2.21, tensorflow-model-optimization 0.8 and
tensorflow-datasets 4.9.
"""

import sys

import keras


class KerasInternalsError(RuntimeError):
    """A private attribute this package relies on is missing or changed."""


def _library_versions():
    versions = []
    for name in ("keras", "tf_keras", "tensorflow_model_optimization"):
        module = sys.modules.get(name)
        if module is not None:
            versions.append(f"{name} {getattr(module, '__version__', '?')}")
    return ", ".join(versions)


def _require(obj, attribute, relied_on):
    """`getattr(obj, attribute)`, or a `KerasInternalsError` saying why."""
    try:
        return getattr(obj, attribute)
    except AttributeError:
        raise KerasInternalsError(
            f"hypersparse_tf relies on `{type(obj).__name__}.{attribute}` "
            f"({relied_on}), which this release does not have "
            f"({_library_versions()}). Please report it with these versions."
        ) from None


def _is_tf_keras(obj):
    tf_keras = sys.modules.get("tf_keras")
    return tf_keras is not None and isinstance(obj, tf_keras.layers.Layer)


# --------------------------------------------------------------------- layers


def flatten_layers(layer, include_self=True, recursive=True):
    """All layers inside `layer`, nested models and custom layers included.

    Relies on `Layer._flatten_layers(include_self, recursive)` (Keras 3 and
    tf_keras): the one walk that finds sublayers held in any attribute, each
    once. `model.layers` lists only the top level.
    """
    walk = _require(layer, "_flatten_layers", "the walk over nested layers")
    return list(walk(include_self=include_self, recursive=recursive))


def sequential_graph(model):
    """The functional graph Keras 3 keeps inside a `Sequential`, or None.

    Relies on `Sequential._functional`: the functional model Keras 3 builds
    once the Sequential knows its input shape (None before).
    """
    return _require(model, "_functional", "the graph of a Sequential model")


def sequential_input_layer(model):
    """The `InputLayer` at the bottom of a built Keras 3 `Sequential`'s stack,
    or None (not built yet).

    Relies on `Sequential._layers`: the stack, which holds the `InputLayer`
    first once the model knows its input shape (`model.layers` leaves it
    out).
    """
    stack = _require(model, "_layers", "the stack of a Sequential model")
    if stack and isinstance(stack[0], keras.layers.InputLayer):
        return stack[0]
    return None


def set_sublayer(owner, name, layer):
    """Sets `owner.<name> = layer` as a tracked sublayer (its variables join
    `owner.variables`), replacing and untracking an earlier one of that name;
    `layer=None` only removes. Works on a built layer, whose state Keras
    locks.

    Relies on `Layer._tracker` (`locked`, `unlock`, `lock`, `untrack`):
    deleting a sublayer attribute leaves it in the layer's list of sublayers,
    and a built layer refuses new sublayers while its tracker is locked.
    """
    tracker = _require(owner, "_tracker", "the tracker of a layer's sublayers")
    locked = tracker.locked
    tracker.unlock()
    try:
        old = getattr(owner, name, None)  # in `_modules`, not `__dict__`, on torch
        if old is not None:
            tracker.untrack(old)
            delattr(owner, name)
        if layer is not None:
            setattr(owner, name, layer)
    finally:
        if locked:
            tracker.lock()


def nodes_by_depth(functional):
    """`{depth: [Node]}` of a Keras 3 functional model.

    Relies on `Functional._nodes_by_depth`: the nodes (layer calls) of the
    graph by their distance from the outputs; each node has the public
    `operation`, `is_input`, `input_tensors` and `output_tensors`.
    """
    return _require(functional, "_nodes_by_depth", "the layer calls of a graph")


def is_functional(model):
    """Whether `model` is a Keras 3 functional model (a graph of layer calls)."""
    return hasattr(model, "_nodes_by_depth")


def is_graph_network(model):
    """Whether a tf_keras model is Sequential or functional (clonable).

    Relies on tf_keras's `Model._is_graph_network`, True for both.
    """
    return bool(_require(model, "_is_graph_network", "tf_keras graph models"))


# -------------------------------------------------------------- fit and steps


def drop_traced_steps(model):
    """Drops the train and test steps an earlier `fit`/`evaluate` traced.

    Relies on `model.train_function` / `model.test_function` being rebuilt by
    the next `fit` / `evaluate` when None, as `compile` itself leaves them, so
    that new losses or constraints are traced in.
    """
    for attribute in ("train_function", "test_function"):
        if getattr(model, attribute, None) is not None:
            setattr(model, attribute, None)


class _ResumeAt:
    """What tf_keras's `fit` asks `model._training_state` for the first epoch."""

    def __init__(self, epoch):
        self.epoch = epoch

    def maybe_load_initial_counters_from_ckpt(
        self, steps_per_epoch, initial_epoch, mode=None
    ):
        return self.epoch, 0


def set_initial_epoch(model, epoch):
    """Makes the next `fit` of `model` start at `epoch`, as a resumed run.

    The way Keras' own `BackupAndRestore` callbacks do it from
    `on_train_begin`. Relies on Keras 3's `fit` reading `model._initial_epoch`
    after the callbacks' `on_train_begin`, and on tf_keras's `fit` asking
    `model._training_state.maybe_load_initial_counters_from_ckpt` (set only
    where no tf_keras `BackupAndRestore` has set it).
    """
    if _is_tf_keras(model):
        _require(model, "_training_state", "tf_keras's resume of fit")
        if model._training_state is None:
            model._training_state = _ResumeAt(epoch)
    else:
        _require(model, "_initial_epoch", "Keras 3's resume of fit")
        model._initial_epoch = epoch


def clear_initial_epoch(model):
    """Undoes `set_initial_epoch` (the next `fit` starts where it is told)."""
    if _is_tf_keras(model):
        if isinstance(getattr(model, "_training_state", None), _ResumeAt):
            model._training_state = None
    elif getattr(model, "_initial_epoch", None) is not None:
        model._initial_epoch = None


# ------------------------------------------------------------------ variables


def index_of_current_value(variables, value):
    """The index in `variables` of the variable whose value in the active
    `keras.StatelessScope` is `value`, or None (outside a scope, or none).

    Relies on `keras.src.backend.get_stateless_scope()` and the scope's
    `get_current_value(variable)`: inside JAX's traced train step Keras calls
    a weight regularizer with the variable's current value (a tracer), which
    this maps back to the variable.
    """
    from keras.src import backend as keras_backend

    get_scope = _require(
        keras_backend, "get_stateless_scope", "the values of a stateless step"
    )
    scope = get_scope()
    if scope is None:
        return None
    for index, variable in enumerate(variables):
        if scope.get_current_value(variable) is value:
            return index
    return None


def set_constraint(variable, constraint):
    """Sets the constraint an optimizer applies to `variable` after updates.

    A Keras 3 variable has a public `constraint` setter. tf_keras keeps the
    constraint of a `tf.Variable` in `_constraint` (its public `constraint` is
    read-only), which tf_keras's optimizers read after each update.
    """
    if isinstance(variable, keras.Variable):
        variable.constraint = constraint
        return
    tf = sys.modules.get("tensorflow")
    if tf is not None and isinstance(variable, tf.distribute.DistributedValues):
        # A tf_keras weight under a strategy: its `constraint` is the one of
        # its component variables (the primary's), so set it on each.
        for component in variable.values:
            set_constraint(component, constraint)
        return
    _require(variable, "_constraint", "the constraint of a tf.Variable")
    variable._constraint = constraint


def add_tf_keras_weight_regularizer(layer, name, weight, regularizer):
    """Adds the loss of `regularizer(weight)` to a built tf_keras layer.

    Relies on tf_keras's `Layer._handle_weight_regularization(name, variable,
    regularizer)`, the method `add_weight` calls for a weight created with a
    regularizer.
    """
    handle = _require(
        layer, "_handle_weight_regularization", "tf_keras's weight regularizers"
    )
    handle(name, weight, regularizer)
    # tf_keras's variables do not remember their regularizer: mark it.
    weight._hypersparse_regularizer = regularizer


def tf_keras_weight_regularizer(weight):
    """The regularizer `add_tf_keras_weight_regularizer` gave `weight`."""
    return getattr(weight, "_hypersparse_regularizer", None)


# ----------------------------------------------------------------- optimizers


def learning_rate_attribute(optimizer):
    """What an optimizer holds as its learning rate: a variable, a float or a
    `LearningRateSchedule`.

    The public `learning_rate` evaluates a schedule, so the schedule itself is
    read from Keras 3's and tf_keras's `Optimizer._learning_rate`, or from a
    legacy tf_keras optimizer's `_hyper["learning_rate"]`.
    """
    if hasattr(optimizer, "_learning_rate"):
        return optimizer._learning_rate
    hyper = _require(optimizer, "_hyper", "the learning rate of an optimizer")
    return hyper.get("learning_rate")


def variable_index(optimizer, variable):
    """The index of `variable` in the lists a Keras 3 optimizer builds (one
    slot variable per trainable variable, in `build`'s order).

    Relies on `Optimizer._get_variable_index(variable)`, which Keras' own
    optimizers use in `update_step` for the same purpose.
    """
    index = _require(optimizer, "_get_variable_index", "an optimizer's slot order")
    return index(variable)


def build_optimizer(model):
    """Creates the optimizer's variables if no step has created them yet.

    Keras 3: the public `build`. tf_keras: `build` under the model's strategy;
    its legacy optimizers (`OptimizerV2`) create their slots with
    `_create_all_weights(variables)`.
    """
    optimizer = model.optimizer
    variables = model.trainable_variables
    if not _is_tf_keras(model):
        if not optimizer.built:
            optimizer.build(variables)
        return
    with model.distribute_strategy.scope():
        if hasattr(optimizer, "_create_all_weights"):  # legacy OptimizerV2
            optimizer._create_all_weights(variables)
        else:  # tf_keras's Optimizer: `build` does nothing the second time.
            optimizer.build(variables)


# ------------------------------------------------------------------- saving


def objects_of_current_load():
    """The dict `{id: object}` Keras keeps of objects shared within the
    `load_model` now running, or None outside a load.

    Keras 3.15 restores the first layer that refers to a shared object with a
    copy of its own (the first config loses its `shared_object_id`); the
    regularizers use this dict to give every kernel the one instance again.
    Relies on `keras.src.backend.common.global_state` and its attribute
    `"shared_objects/id_to_obj_map"`, and for tf_keras on
    `tf_keras.src.saving.serialization_lib.SHARED_OBJECTS`.
    """
    try:
        from keras.src.backend.common import global_state
    except ImportError as error:
        raise KerasInternalsError(
            "hypersparse_tf relies on keras.src.backend.common.global_state (the "
            f"objects shared within a load), which is missing "
            f"({_library_versions()}). Please report it with these versions."
        ) from error
    objects = global_state.get_global_attribute("shared_objects/id_to_obj_map")
    if objects is not None or "tf_keras" not in sys.modules:
        return objects
    try:
        from tf_keras.src.saving import serialization_lib
    except ImportError as error:
        raise KerasInternalsError(
            "hypersparse_tf relies on tf_keras.src.saving.serialization_lib "
            f"(the objects shared within a load), which is missing "
            f"({_library_versions()}). Please report it with these versions."
        ) from error
    shared = serialization_lib.SHARED_OBJECTS
    if not getattr(shared, "enabled", False):
        return None
    return shared.id_to_obj_map


# ------------------------------------------------------- other libraries


def tfmot_pruned_weight_names(layer):
    """The attribute names of the weights tfmot's registry prunes in `layer`,
    or None for a layer the registry does not know.

    Relies on tfmot 0.8's `prune_registry.PruneRegistry.supports(layer)` and
    its private `_weight_names(layer)`.
    """
    from tensorflow_model_optimization.python.core.sparsity.keras import prune_registry

    registry = prune_registry.PruneRegistry
    if not registry.supports(layer):
        return None
    names = _require(registry, "_weight_names", "tfmot's registry of layers")
    return list(names(layer))


def tfds_features(builder):
    """The features of a tensorflow-datasets builder, labels included.

    `builder.info` restored from prepared data can lack the label names; the
    builder's own `_info()` always has them.
    """
    features = builder.info.features
    if "label" not in features:
        features = _require(builder, "_info", "a tfds builder's own info")()
        features = features.features
    return features
