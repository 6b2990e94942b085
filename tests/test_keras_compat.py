"""Each private Keras / tf_keras / tfmot / tfds attribute the package relies on,
checked for its effect: a release that changes one fails here, loudly."""

import keras
import numpy as np
import pytest

from hypersparse_tf import _keras_compat
from hypersparse_tf import regularizers


def _sequential(seed=0):
    keras.utils.set_random_seed(seed)
    return keras.Sequential(
        [
            keras.Input((4,)),
            keras.layers.Dense(3, name="d1"),
            keras.layers.Dense(2, name="d2"),
        ],
        name="seq",
    )


def _compiled(model, optimizer=None):
    model.compile(optimizer=optimizer or keras.optimizers.SGD(0.1), loss="mse")
    return model


def _data(n=8):
    rng = np.random.default_rng(0)
    return rng.random((n, 4), np.float32), rng.random((n, 2), np.float32)


class _Epochs(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.epochs = []

    def on_epoch_begin(self, epoch, logs=None):
        self.epochs.append(epoch)


def test_missing_attribute_raises_keras_internals_error():
    with pytest.raises(_keras_compat.KerasInternalsError, match="_flatten_layers"):
        _keras_compat.flatten_layers(object())


def test_flatten_layers_finds_nested_layers_once():
    inner = _sequential()
    inputs = keras.Input((4,))
    outputs = keras.layers.Dense(1, name="head")(inner(inputs))
    outer = keras.Model(inputs, outputs, name="outer")
    names = [layer.name for layer in _keras_compat.flatten_layers(outer)]
    assert names.count("d1") == 1 and names.count("head") == 1
    assert names[0] == "outer" and "seq" in names
    top = _keras_compat.flatten_layers(outer, include_self=False, recursive=False)
    assert "d1" not in [layer.name for layer in top]


def test_sequential_graph_and_nodes_by_depth():
    model = _sequential()
    graph = _keras_compat.sequential_graph(model)
    assert _keras_compat.is_functional(graph)
    nodes = _keras_compat.nodes_by_depth(graph)
    operations = [
        node.operation.name
        for depth in sorted(nodes, reverse=True)
        for node in nodes[depth]
        if not node.is_input
    ]
    assert operations == ["d1", "d2"]
    assert (
        _keras_compat.sequential_graph(keras.Sequential([keras.layers.Dense(1)]))
        is None
    )


def test_sequential_input_layer_is_in_the_stack_and_outside_layers():
    model = _sequential()
    first = _keras_compat.sequential_input_layer(model)
    assert isinstance(first, keras.layers.InputLayer)
    assert first not in model.layers
    unbuilt = keras.Sequential([keras.layers.Dense(2)])
    assert _keras_compat.sequential_input_layer(unbuilt) is None
    unbuilt.build((None, 4))
    assert _keras_compat.sequential_input_layer(unbuilt) is not None


def test_set_sublayer_tracks_replaces_and_relocks_a_built_layer():
    model = _sequential()
    owner = model.get_layer("d1")  # built: Keras locks its state
    before = len(model.non_trainable_variables)

    def holder(value):
        layer = keras.layers.Layer(trainable=False)
        layer.state = layer.add_weight(
            shape=(), initializer=keras.initializers.Constant(value), trainable=False
        )
        return layer

    with pytest.raises(ValueError, match="already built"):
        owner.extra = holder(1.0)  # what the unlocking is for
    first, second = holder(1.0), holder(2.0)
    _keras_compat.set_sublayer(owner, "held", first)
    assert model.non_trainable_variables[before:] == [first.state]
    _keras_compat.set_sublayer(owner, "held", second)  # replaced, not added
    assert model.non_trainable_variables[before:] == [second.state]
    assert owner.held is second
    with pytest.raises(ValueError, match="already built"):
        owner.extra = holder(3.0)  # locked again
    _keras_compat.set_sublayer(owner, "held", None)
    assert len(model.non_trainable_variables) == before


def test_index_of_current_value_maps_a_stateless_step_value_to_its_variable():
    model = _sequential()
    seen = []

    def regularizer(x):
        seen.append(x)
        return keras.ops.sum(x) * 0.0

    layer = model.get_layer("d2")
    layer.kernel.regularizer = regularizer
    kernels = [model.get_layer("d1").kernel, layer.kernel]
    value = keras.ops.ones(layer.kernel.shape)
    with keras.StatelessScope(state_mapping=[(layer.kernel, value)]):
        assert len(layer.losses) == 1  # Keras hands the regularizer the value
        assert seen[-1] is value
        assert _keras_compat.index_of_current_value(kernels, value) == 1
        assert _keras_compat.index_of_current_value(kernels, kernels[1]) is None
    assert _keras_compat.index_of_current_value(kernels, value) is None  # no scope


def test_drop_traced_steps_makes_fit_trace_again():
    model = _compiled(_sequential())
    x, y = _data()
    model.fit(x, y, verbose=0)
    first = model.train_function
    model.fit(x, y, verbose=0)
    assert model.train_function is first  # Keras keeps a traced step
    _keras_compat.drop_traced_steps(model)
    assert model.train_function is None
    model.fit(x, y, verbose=0)
    assert model.train_function is not None and model.train_function is not first


def test_set_initial_epoch_resumes_keras_3_fit():
    model = _compiled(_sequential())
    x, y = _data()
    _keras_compat.set_initial_epoch(model, 3)
    epochs = _Epochs()
    model.fit(x, y, epochs=5, verbose=0, callbacks=[epochs])
    assert epochs.epochs == [3, 4]
    _keras_compat.clear_initial_epoch(model)
    epochs = _Epochs()
    model.fit(x, y, epochs=2, verbose=0, callbacks=[epochs])
    assert epochs.epochs == [0, 1]


def test_set_constraint_is_applied_by_the_keras_3_optimizer():
    model = _compiled(_sequential())
    kernel = model.get_layer("d1").kernel
    _keras_compat.set_constraint(kernel, lambda w: w * 0.0)
    _keras_compat.drop_traced_steps(model)
    model.fit(*_data(), verbose=0)
    assert np.all(kernel.numpy() == 0)


def test_objects_of_current_load_is_a_dict_only_during_a_load(tmp_path):
    seen = []

    @keras.saving.register_keras_serializable(package="hypersparse_tf_test")
    class Probe(keras.regularizers.Regularizer):
        def __call__(self, x):
            return 0.0

        def get_config(self):
            return {}

        @classmethod
        def from_config(cls, config):
            seen.append(_keras_compat.objects_of_current_load())
            return cls()

    assert _keras_compat.objects_of_current_load() is None
    model = keras.Sequential(
        [keras.Input((4,)), keras.layers.Dense(2, kernel_regularizer=Probe())]
    )
    model.save(tmp_path / "m.keras")
    keras.saving.load_model(tmp_path / "m.keras")
    assert seen and all(isinstance(objects, dict) for objects in seen)


def test_keras_3_still_copies_the_first_shared_object_on_load(tmp_path):
    # Why `objects_of_current_load` is needed: without it, the first layer
    # of a loaded model gets a regularizer of its own. If this starts to
    # fail, Keras shares objects itself and the workaround can go.
    reg = regularizers.HyperSparse(0.5)
    model = keras.Sequential(
        [
            keras.Input((4,)),
            keras.layers.Dense(3, kernel_regularizer=reg, name="a"),
            keras.layers.Dense(2, kernel_regularizer=reg, name="b"),
        ]
    )
    model.save(tmp_path / "m.keras")
    original = regularizers.HyperSparse.from_config

    def plain(config):  # the class's own from_config, without the shared map
        config = dict(config)
        config.pop("uid", None)
        return regularizers.HyperSparse(**config)

    try:
        regularizers.HyperSparse.from_config = staticmethod(plain)
        loaded = keras.saving.load_model(tmp_path / "m.keras")
    finally:
        regularizers.HyperSparse.from_config = original
    first, second = (loaded.get_layer(n).kernel_regularizer for n in "ab")
    assert first is not second
    loaded = keras.saving.load_model(tmp_path / "m.keras")
    first, second = (loaded.get_layer(n).kernel_regularizer for n in "ab")
    assert first is second


@pytest.mark.parametrize("schedule", [False, True])
def test_learning_rate_attribute_holds_the_schedule(schedule):
    rate = (
        keras.optimizers.schedules.ExponentialDecay(0.1, 10, 0.5) if schedule else 0.1
    )
    value = _keras_compat.learning_rate_attribute(keras.optimizers.SGD(rate))
    assert (value is rate) == schedule
    if not schedule:
        assert float(np.asarray(value)) == pytest.approx(0.1)


def test_build_optimizer_creates_the_keras_3_slots():
    model = _compiled(_sequential(), keras.optimizers.SGD(0.1, momentum=0.9))
    assert not model.optimizer.built
    _keras_compat.build_optimizer(model)
    # iterations, learning rate and one momentum per trainable variable
    assert len(model.optimizer.variables) == 2 + len(model.trainable_variables)


def _tf_keras_model():
    tf_keras = pytest.importorskip("tf_keras", reason="tf_keras not installed")
    model = tf_keras.Sequential(
        [tf_keras.Input((4,)), tf_keras.layers.Dense(2, name="d")]
    )
    return tf_keras, model


@pytest.mark.parametrize("legacy", [False, True])
def test_tf_keras_optimizer_internals(legacy):
    tf_keras, model = _tf_keras_model()
    module = tf_keras.optimizers.legacy if legacy else tf_keras.optimizers
    schedule = tf_keras.optimizers.schedules.ExponentialDecay(0.1, 10, 0.5)
    optimizer = module.SGD(schedule, momentum=0.9)
    assert _keras_compat.learning_rate_attribute(optimizer) is schedule
    model.compile(optimizer=optimizer, loss="mse")
    _keras_compat.build_optimizer(model)
    variables = optimizer.variables
    variables = variables() if callable(variables) else variables
    momenta = [v for v in variables if tuple(v.shape) in ((4, 2), (2,))]
    assert len(momenta) == 2


def test_tf_keras_constraint_regularizer_resume_and_graph():
    tf_keras, model = _tf_keras_model()
    model.compile(optimizer=tf_keras.optimizers.SGD(0.1), loss="mse")
    layer = model.get_layer("d")
    _keras_compat.set_constraint(layer.kernel, lambda w: w * 0.0)
    reg = regularizers.AdaptiveL1(coefficient=0.5)
    _keras_compat.add_tf_keras_weight_regularizer(layer, "kernel", layer.kernel, reg)
    assert _keras_compat.tf_keras_weight_regularizer(layer.kernel) is reg
    expected = 0.5 * np.abs(layer.kernel.numpy()).sum()
    assert float(sum(model.losses)) == pytest.approx(expected, rel=1e-6)
    x, y = _data()
    seen = []

    class Epochs(tf_keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            seen.append(epoch)

    _keras_compat.set_initial_epoch(model, 2)
    model.fit(x, y, epochs=4, verbose=0, callbacks=[Epochs()])
    assert seen == [2, 3]
    assert np.all(layer.kernel.numpy() == 0)  # the constraint was applied
    _keras_compat.clear_initial_epoch(model)
    seen.clear()
    model.fit(x, y, epochs=1, verbose=0, callbacks=[Epochs()])
    assert seen == [0]
    assert _keras_compat.is_graph_network(model)

    class Subclassed(tf_keras.Model):
        def call(self, x):
            return x

    assert not _keras_compat.is_graph_network(Subclassed())


def test_tfds_features_have_the_label_names():
    tfds = pytest.importorskip(
        "tensorflow_datasets", reason="tensorflow-datasets not installed"
    )
    features = _keras_compat.tfds_features(tfds.builder("mnist"))
    assert features["label"].names == [str(i) for i in range(10)]


def test_tf_keras_constraint_under_a_strategy_reaches_the_optimizer():
    tf_keras = pytest.importorskip("tf_keras", reason="tf_keras not installed")
    import tensorflow as tf

    with tf.distribute.MirroredStrategy(["/cpu:0"]).scope():
        model = tf_keras.Sequential(
            [tf_keras.Input((4,)), tf_keras.layers.Dense(2, name="d")]
        )
        model.compile(optimizer=tf_keras.optimizers.SGD(0.1), loss="mse")
    kernel = model.get_layer("d").kernel
    assert isinstance(kernel, tf.distribute.DistributedValues)
    _keras_compat.set_constraint(kernel, lambda w: w * 0.0)
    assert kernel.constraint is not None  # the primary component's
    model.fit(*_data(), verbose=0)
    assert np.all(kernel.numpy() == 0)
