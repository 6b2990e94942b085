"""Tests of the TFLite export: every artifact is run in its interpreter."""

import os
import re
import shutil
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf
from sklearn.datasets import load_digits

import hypersparse_tf
from hypersparse_tf import export
from hypersparse_tf.export import conversion
from hypersparse_tf.export import litert
from hypersparse_tf.export import micro
from hypersparse_tf.export import micro_worker

pytest.importorskip(
    "ai_edge_litert",
    reason='LiteRT not installed: pip install "hypersparse_tf[export]"',
)
pytest.importorskip(
    "tflite_micro",
    reason='TFLite Micro not installed: pip install "hypersparse_tf[export]"',
)

# Tries one arena in a fresh process; a crash counts as refused.
_TRY_ARENA = r"""
import sys
import numpy as np
from tflite_micro import runtime
data = open(sys.argv[1], "rb").read()
interpreter = runtime.Interpreter.from_bytes(data, arena_size=int(sys.argv[2]))
details = interpreter.get_input_details(0)
interpreter.set_input(np.zeros(details["shape"], details["dtype"]), 0)
interpreter.invoke()
print("accepted")
"""


def _micro_accepts(path, arena_size):
    result = subprocess.run(
        [sys.executable, "-c", _TRY_ARENA, str(path), str(arena_size)],
        capture_output=True,
        text=True,
    )
    return result.returncode == 0 and result.stdout.strip() == "accepted"


@pytest.fixture(scope="module")
def digits():
    data = load_digits()
    x = (data.data / 16.0).astype("float32")
    order = np.random.default_rng(0).permutation(len(x))
    train, test = order[:1400], order[1400:]
    return x[train], data.target[train], x[test], data.target[test]


@pytest.fixture(scope="module")
def digits_model(digits):
    """An MLP trained briefly on digits, 80% of its kernels pruned, fine-tuned."""
    x_train, y_train, _, _ = digits
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((64,)),
            keras.layers.Dense(32, activation="relu", name="hidden"),
            keras.layers.Dense(10, name="logits"),
        ],
        name="digits_mlp",
    )
    model.compile(
        keras.optimizers.Adam(0.01),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    model.fit(x_train, y_train, epochs=8, batch_size=64, verbose=0)
    masks = hypersparse_tf.global_magnitude_masks(model, 0.8)
    hypersparse_tf.apply_masks(model, masks)
    keep_masks = keras.callbacks.LambdaCallback(
        on_train_batch_end=lambda batch, logs: hypersparse_tf.apply_masks(model, masks)
    )
    model.fit(
        x_train, y_train, epochs=4, batch_size=64, verbose=0, callbacks=[keep_masks]
    )
    return model


@pytest.fixture(scope="module")
def micro_model(digits, digits_model):
    return export.to_tflite(digits_model, "micro", representative_data=digits[0][:200])


def _keras_outputs(model, x):
    return model.predict(x, verbose=0)


def _agreement(outputs, reference):
    return float(np.mean(np.argmax(outputs, -1) == np.argmax(reference, -1)))


@pytest.mark.parametrize("sparse", [False, True])
def test_to_tflite_mobile_float_matches_keras(digits, digits_model, sparse):
    x_test = digits[2]
    tflite_bytes = export.to_tflite(digits_model, "mobile", sparse=sparse)
    info = export.inspect_tflite(tflite_bytes)
    assert bool(info["sparse_tensors"]) == sparse
    assert ("DENSIFY" in info["operators"]) == sparse
    assert info["inputs"][0]["dtype"] == "float32"
    outputs = export.run_tflite(tflite_bytes, x_test)
    reference = _keras_outputs(digits_model, x_test)
    assert outputs.shape == reference.shape
    assert np.max(np.abs(outputs - reference)) < 1e-5


def test_to_tflite_mobile_sparse_is_smaller(digits_model):
    dense = export.to_tflite(digits_model, "mobile", sparse=False)
    sparse = export.to_tflite(digits_model, "mobile")
    assert len(sparse) < 0.6 * len(dense)


@pytest.mark.parametrize(
    "quantization, sparse, tolerance, operator",
    [("float16", True, 1e-2, "DEQUANTIZE"), ("dynamic_int8", False, 0.2, None)],
)
def test_to_tflite_mobile_quantized_matches_keras(
    digits, digits_model, quantization, sparse, tolerance, operator
):
    x_test = digits[2]
    tflite_bytes = export.to_tflite(
        digits_model, "mobile", quantization=quantization, sparse=sparse
    )
    float_bytes = export.to_tflite(digits_model, "mobile", sparse=sparse)
    assert len(tflite_bytes) < len(float_bytes)
    if operator:
        assert operator in export.inspect_tflite(tflite_bytes)["operators"]
    outputs = export.run_tflite(tflite_bytes, x_test)
    reference = _keras_outputs(digits_model, x_test)
    assert np.max(np.abs(outputs - reference)) < tolerance
    assert _agreement(outputs, reference) >= 0.99


def test_to_tflite_micro_int8_agrees_with_keras_on_digits(
    digits, digits_model, micro_model
):
    info = export.inspect_tflite(micro_model)
    assert "DENSIFY" not in info["operators"]
    assert info["sparse_tensors"] == []
    assert info["custom_operators"] == []
    assert [t["dtype"] for t in info["inputs"] + info["outputs"]] == ["int8", "int8"]
    x_test = digits[2]
    outputs = export.run_micro(micro_model, x_test)
    assert outputs.shape == (len(x_test), 10)
    assert _agreement(outputs, _keras_outputs(digits_model, x_test)) >= 0.99


def test_to_tflite_micro_of_shrunk_model_agrees_with_keras(digits, digits_model):
    from hypersparse_tf.shrink import shrink

    x_train, _, x_test, _ = digits
    small = shrink(digits_model)
    assert small.get_layer("hidden").units < 32
    tflite_bytes = export.to_tflite(small, "micro", representative_data=x_train[:200])
    outputs = export.run_micro(tflite_bytes, x_test)
    assert _agreement(outputs, _keras_outputs(digits_model, x_test)) >= 0.99


def test_micro_functions_refuse_a_sparse_mobile_model(digits, digits_model):
    sparse = export.to_tflite(digits_model, "mobile")
    with pytest.raises(ValueError, match="DENSIFY op; .* sparse form"):
        export.run_micro(sparse, digits[2][:4])
    with pytest.raises(ValueError, match="argument `tflite_bytes`.*DENSIFY"):
        export.micro_arena_size(sparse)


def test_micro_arena_size_is_the_smallest_accepted(micro_model, tmp_path):
    arena_size = export.micro_arena_size(micro_model)
    path = tmp_path / "model.tflite"
    path.write_bytes(micro_model)
    assert _micro_accepts(path, arena_size)
    assert not _micro_accepts(path, arena_size - 1)
    assert not _micro_accepts(path, arena_size - 1024)


def _parse_c_array(source, name):
    match = re.search(
        r"alignas\(16\) const unsigned char " + name + r"\[\] = \{(.*?)\};",
        source,
        re.S,
    )
    return bytes(int(token, 16) for token in re.findall(r"0x[0-9a-f]{2}", match[1]))


def test_write_c_array_bytes_equal_the_flatbuffer(micro_model, tmp_path):
    header, source = export.write_c_array(
        micro_model, tmp_path / "model_data", "g_model"
    )
    assert (header, source) == (
        str(tmp_path / "model_data.h"),
        str(tmp_path / "model_data.cc"),
    )
    header_text = open(header).read()
    source_text = open(source).read()
    assert "#ifndef MODEL_DATA_H_\n#define MODEL_DATA_H_" in header_text
    assert "extern const unsigned char g_model[];" in header_text
    assert "extern const unsigned int g_model_len;" in header_text
    assert '#include "model_data.h"' in source_text
    assert f"const unsigned int g_model_len = {len(micro_model)};" in source_text
    assert _parse_c_array(source_text, "g_model") == micro_model
    assert sorted(os.listdir(tmp_path)) == ["model_data.cc", "model_data.h"]
    umask = os.umask(0)
    os.umask(umask)
    for path in (header, source):  # not the 0600 of a temporary file
        assert os.stat(path).st_mode & 0o777 == 0o666 & ~umask


@pytest.mark.skipif(shutil.which("g++") is None, reason="needs a C++ compiler")
def test_write_c_array_compiles_to_the_same_bytes(micro_model, tmp_path):
    export.write_c_array(micro_model, tmp_path / "model_data", "g_model")
    main = tmp_path / "main.cc"
    main.write_text(
        '#include <cstdint>\n#include <cstdio>\n#include "model_data.h"\n'
        "int main() {\n"
        '  std::FILE* f = std::fopen("out.bin", "wb");\n'
        "  std::fwrite(g_model, 1, g_model_len, f);\n"
        "  std::fclose(f);\n"
        '  std::printf("%d", int(reinterpret_cast<std::uintptr_t>(g_model) % 16));\n'
        "}\n"
    )
    subprocess.run(
        ["g++", "-std=c++17", "-o", "check", "main.cc", "model_data.cc"],
        cwd=tmp_path,
        check=True,
    )
    result = subprocess.run(
        ["./check"], cwd=tmp_path, capture_output=True, text=True, check=True
    )
    assert result.stdout == "0"
    assert (tmp_path / "out.bin").read_bytes() == micro_model


@pytest.mark.parametrize("name", ["1model", "my-model", "", None])
def test_write_c_array_rejects_a_name_that_is_no_c_identifier(
    micro_model, tmp_path, name
):
    with pytest.raises(ValueError, match="Invalid value for argument `name`"):
        export.write_c_array(micro_model, tmp_path / "model_data", name)
    assert os.listdir(tmp_path) == []


def test_write_c_array_to_a_missing_directory_writes_nothing(micro_model, tmp_path):
    with pytest.raises(OSError, match="argument `path`.*does not exist"):
        export.write_c_array(micro_model, tmp_path / "missing" / "model", "g_model")
    assert os.listdir(tmp_path) == []


def test_write_c_array_to_an_unwritable_path_writes_nothing(micro_model, tmp_path):
    (tmp_path / "model_data.cc").mkdir()  # A directory where a file must go.
    with pytest.raises(OSError, match="argument `path`: cannot write"):
        export.write_c_array(micro_model, tmp_path / "model_data", "g_model")
    assert os.listdir(tmp_path) == ["model_data.cc"]
    assert os.listdir(tmp_path / "model_data.cc") == []


def test_write_c_array_rejects_bytes_that_are_no_tflite_model(tmp_path):
    with pytest.raises(ValueError, match="not a TFLite flatbuffer"):
        export.write_c_array(b"\x00" * 16, tmp_path / "model_data", "g_model")
    with pytest.raises(TypeError, match="argument `tflite_bytes`"):
        export.write_c_array(b"", tmp_path / "model_data", "g_model")


def _tiny_model(activation="relu"):
    keras.utils.set_random_seed(0)
    return keras.Sequential(
        [keras.Input((8,)), keras.layers.Dense(4, activation=activation)]
    )


def test_to_tflite_mobile_verifies_a_model_with_two_inputs():
    keras.utils.set_random_seed(0)
    first, second = keras.Input((3,)), keras.Input((5,))
    merged = keras.layers.Concatenate()([first, second])
    model = keras.Model([first, second], keras.layers.Dense(2)(merged))
    info = export.inspect_tflite(export.to_tflite(model, "mobile"))
    assert sorted(t["shape"][1] for t in info["inputs"]) == [3, 5]


def test_to_tflite_rejects_an_unknown_target():
    with pytest.raises(ValueError, match=r"argument `target`.*Received: target='tpu'"):
        export.to_tflite(_tiny_model(), "tpu")


@pytest.mark.parametrize(
    "target, quantization",
    [("mobile", "int8"), ("micro", "float16"), ("mobile", "INT8")],
)
def test_to_tflite_rejects_a_quantization_of_another_target(target, quantization):
    data = np.zeros((4, 8), "float32") if target == "micro" else None
    with pytest.raises(ValueError, match="argument `quantization`"):
        export.to_tflite(_tiny_model(), target, data, quantization=quantization)


def test_to_tflite_micro_needs_representative_data():
    with pytest.raises(ValueError, match="argument `representative_data`.*None"):
        export.to_tflite(_tiny_model(), "micro")


def test_to_tflite_micro_rejects_misshaped_representative_data():
    with pytest.raises(ValueError, match=r"shape \(num_samples, \*\(8,\)\)"):
        export.to_tflite(_tiny_model(), "micro", np.zeros((4, 9), "float32"))


def test_to_tflite_micro_refuses_sparse_encoding():
    with pytest.raises(ValueError, match="argument `sparse`: TFLite Micro"):
        export.to_tflite(_tiny_model(), "micro", np.zeros((4, 8)), sparse=True)


def test_to_tflite_mobile_refuses_representative_data():
    with pytest.raises(ValueError, match="argument `representative_data`"):
        export.to_tflite(_tiny_model(), "mobile", np.zeros((4, 8)))


def test_to_tflite_micro_names_an_op_tflite_micro_lacks():
    data = np.random.default_rng(0).random((16, 8), np.float32)
    with pytest.raises(ValueError, match="TFLite Micro cannot run the op GELU"):
        export.to_tflite(_tiny_model("gelu"), "micro", data)


def test_to_tflite_reports_a_failed_conversion():
    class Singular(keras.layers.Layer):
        def call(self, x):
            return tf.linalg.svd(tf.reshape(x, (-1, 2, 4)), compute_uv=False)

    model = keras.Sequential([keras.Input((8,)), Singular()], name="svd_model")
    with pytest.raises(ValueError, match="converting model 'svd_model'.*Svd"):
        export.to_tflite(model, "mobile")


def test_run_tflite_without_litert_names_the_extra(monkeypatch, micro_model):
    monkeypatch.setitem(sys.modules, "ai_edge_litert", None)
    monkeypatch.setitem(sys.modules, "ai_edge_litert.interpreter", None)
    with pytest.raises(ImportError, match=r'pip install "hypersparse_tf\[export\]"'):
        export.run_tflite(micro_model, None)


def test_micro_arena_size_without_tflite_micro_names_the_extra(
    monkeypatch, micro_model
):
    monkeypatch.setitem(sys.modules, "tflite_micro", None)
    with pytest.raises(ImportError, match=r'pip install "hypersparse_tf\[export\]"'):
        export.micro_arena_size(micro_model)


def test_litert_latency_is_the_median_of_interleaved_rounds(digits_model, monkeypatch):
    models = {
        "dense": export.to_tflite(digits_model, "mobile", sparse=False),
        "sparse": export.to_tflite(digits_model, "mobile"),
    }
    # A fake clock: each invoke of "dense" takes 1, 2, ... ms by round, each of
    # "sparse" 10x that; the first (warm-up) round 1 s, never counted.
    ticks = []
    for round_index in range(6):
        for factor in (1, 10):
            elapsed = 1.0 if round_index == 0 else factor * round_index * 1e-3
            ticks += [100.0 * len(ticks), 100.0 * len(ticks) + elapsed]
    clock = iter(ticks)
    monkeypatch.setattr(litert.time, "perf_counter", lambda: next(clock))
    latency = export.litert_latency(models, num_runs=5, num_warmup=1)
    assert latency == pytest.approx({"dense": 3e-3, "sparse": 3e-2})
    assert next(clock, None) is None  # one timing per model and round


def test_deployment_report_runs_every_artifact(digits, digits_model, tmp_path):
    x_train, _, x_test, y_test = digits
    x_eval, y_eval = x_test[:200], y_test[:200]
    report = export.deployment_report(digits_model, x_train[:200], x_eval, y_eval)
    rows = {row["artifact"]: row for row in report["artifacts"]}
    assert list(rows) == [
        "keras",
        "mobile_float",
        "mobile_sparse",
        "micro_int8",
        "micro_int8_shrunk",
    ]
    nonzero = sum(int(np.count_nonzero(w)) for w in digits_model.get_weights())
    for artifact in ("keras", "mobile_float", "mobile_sparse"):
        assert rows[artifact]["nonzero_parameters"] == nonzero
        assert rows[artifact]["agreement"] == 1.0
        assert rows[artifact]["max_abs_diff"] < 1e-5
    accuracy = float(
        np.mean(np.argmax(_keras_outputs(digits_model, x_eval), -1) == y_eval)
    )
    assert rows["keras"]["accuracy"] == accuracy
    assert rows["mobile_sparse"]["bytes"] < rows["mobile_float"]["bytes"]
    for artifact in ("micro_int8", "micro_int8_shrunk"):
        assert rows[artifact]["agreement"] >= 0.99
    assert rows["micro_int8_shrunk"]["bytes"] < rows["micro_int8"]["bytes"]
    assert rows["keras"]["arena_bytes"] is None
    digits_model.save(tmp_path / "with_optimizer.keras")
    with_optimizer = (tmp_path / "with_optimizer.keras").stat().st_size
    adam_state = 2 * 4 * digits_model.count_params()  # Two float32 moments.
    assert with_optimizer - rows["keras"]["bytes"] >= adam_state
    markdown = export.report_markdown(report)
    assert markdown.count("\n| ") == 1 + 5  # The header and one row each.
    assert f"| micro_int8 | {rows['micro_int8']['bytes']:,} |" in markdown


def test_deployment_report_rejects_labels_of_another_length(digits, digits_model):
    x_train, _, x_test, y_test = digits
    with pytest.raises(ValueError, match="argument `y`"):
        export.deployment_report(digits_model, x_train[:8], x_test[:8], y_test[:7])


def test_deployment_report_reuses_artifacts_and_finds_each_arena_once(
    digits, digits_model, monkeypatch, tmp_path
):
    x_train, _, x_test, y_test = digits
    artifacts = export.convert_artifacts(digits_model, x_train[:200])
    assert list(artifacts) == [a for t in export.TARGETS for a in export.ARTIFACTS[t]]
    calls = {"arena": 0}
    real_arena = micro.micro_arena_size

    def counted_arena(tflite_bytes):
        calls["arena"] += 1
        return real_arena(tflite_bytes)

    def no_conversion(*args, **kwargs):
        raise AssertionError("converted again")

    monkeypatch.setattr(micro, "micro_arena_size", counted_arena)
    monkeypatch.setattr(conversion, "to_tflite", no_conversion)
    report = export.deployment_report(
        digits_model, None, x_test[:100], y_test[:100], artifacts=artifacts
    )
    assert calls["arena"] == 2
    rows = {row["artifact"]: row for row in report["artifacts"]}
    for artifact in ("micro_int8", "micro_int8_shrunk"):
        path = tmp_path / f"{artifact}.tflite"
        path.write_bytes(artifacts[artifact])
        arena = rows[artifact]["arena_bytes"]
        assert rows[artifact]["bytes"] == len(artifacts[artifact])
        assert _micro_accepts(path, arena) and not _micro_accepts(path, arena - 1)


def test_deployment_report_of_mobile_only_never_runs_tflite_micro(
    digits, digits_model, monkeypatch
):
    x_train, _, x_test, y_test = digits

    def no_micro(*args, **kwargs):
        raise AssertionError("TFLite Micro was used")

    monkeypatch.setattr(micro, "run_micro", no_micro)
    monkeypatch.setattr(micro, "micro_arena_size", no_micro)
    report = export.deployment_report(
        digits_model, None, x_test[:50], y_test[:50], targets=("mobile",)
    )
    rows = [row["artifact"] for row in report["artifacts"]]
    assert rows == ["keras", "mobile_float", "mobile_sparse"]


@pytest.mark.parametrize(
    "kwargs, argument",
    [
        (dict(targets=()), "targets"),
        (dict(targets="mobile"), "targets"),
        (dict(targets=("phone",)), "targets"),
        (dict(targets=("mobile",), artifacts={"micro_int8": b"x"}), "artifacts"),
    ],
)
def test_deployment_report_bad_targets_and_artifacts(
    digits, digits_model, kwargs, argument
):
    _, _, x_test, y_test = digits
    with pytest.raises(ValueError, match=f"argument `{argument}`"):
        export.deployment_report(digits_model, None, x_test[:8], y_test[:8], **kwargs)


def test_micro_worker_runs_by_path_without_tensorflow(
    digits, digits_model, micro_model, tmp_path
):
    _, _, x_test, _ = digits
    details = export.inspect_tflite(micro_model)["inputs"][0]
    scale, zero_point = details["scale"][0], details["zero_point"][0]
    x = np.clip(np.round(x_test[:5] / scale) + zero_point, -128, 127).astype(np.int8)
    arena = 1 << 20
    in_process = micro_worker.run(micro_model, arena, x)
    assert micro_worker.runs_on_zeros(micro_model, arena, 1)
    (tmp_path / "m.tflite").write_bytes(micro_model)
    np.save(tmp_path / "x.npy", x)
    argv = [micro_worker.__file__, "run", str(tmp_path / "m.tflite"), str(arena)]
    argv += [str(tmp_path / "x.npy"), str(tmp_path / "y.npy")]
    code = (
        f"import runpy, sys; sys.argv = {argv!r}; "
        "runpy.run_path(sys.argv[0], run_name='__main__'); "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('tensorflow', 'keras', 'hypersparse_tf')))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"
    np.testing.assert_array_equal(np.load(tmp_path / "y.npy"), in_process)
    with pytest.raises(SystemExit, match="unknown mode 'fly'"):
        micro_worker.main(["micro_worker.py", "fly", str(tmp_path / "m.tflite")])
