import importlib.util
import json
import math
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
from absl import flags

from hypersparse_tf import experiment
from hypersparse_tf import export

ROOT = pathlib.Path(__file__).resolve().parent.parent
RUN_FILES = [
    "model.keras",
    "masks.npz",
    "history.csv",
    "art_history.json",
    "tensorboard",
    "sparsity_report.txt",
    "mobile_float.tflite",
    "mobile_sparse.tflite",
    "micro_int8.tflite",
    "micro_model.h",
    "micro_model.cc",
    "deployment_report.md",
    "deployment_report.json",
    "accuracy.png",
    "coefficient_sparsity.png",
    "layer_density.png",
    "summary.json",
]
TINY = dict(warmup_epochs=2, lambda_init=2e-3, eta=1.5, finetune_epochs=2)


def _load_script():
    spec = importlib.util.spec_from_file_location(
        "train_script", ROOT / "examples" / "train.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


train_script = _load_script()


def test_train_and_evaluate_end_to_end(tmp_path):
    config = experiment.Config(**TINY, max_epochs=60)
    out = tmp_path / "run"
    summary = experiment.train_and_evaluate(config, str(out), verbose=0)
    for name in RUN_FILES:
        assert (out / name).exists(), name
    assert summary["phase"] == "done"
    n = 6032  # small_cnn on 8x8x1 digits
    assert summary["sparsity"] == math.floor(0.95 * n) / n
    masks = np.load(out / "masks.npz")
    assert sum(int((~masks[k]).sum()) for k in masks.files) == math.floor(0.95 * n)
    micro = (out / "micro_int8.tflite").read_bytes()
    info = export.inspect_tflite(micro)
    assert "DENSIFY" not in info["operators"] and not info["sparse_tensors"]
    assert summary["micro_bytes"] == len(micro)
    c_source = (out / "micro_model.cc").read_text()
    assert f"{len(micro)}" in c_source
    rows = {r["artifact"]: r for r in summary["deployment_report"]["artifacts"]}
    assert rows["micro_int8_shrunk"]["agreement"] >= 0.95
    # The board's numbers are the report's own (one run, one arena search).
    assert summary["micro_test_accuracy"] == rows["micro_int8_shrunk"]["accuracy"]
    assert summary["micro_arena_bytes"] == rows["micro_int8_shrunk"]["arena_bytes"]
    assert rows["micro_int8_shrunk"]["bytes"] == len(micro)
    assert summary["sparse_test_accuracy"] > 0.5
    assert json.loads((out / "summary.json").read_text())["phase"] == "done"
    history = (out / "history.csv").read_text().splitlines()
    assert len(history) == summary["epochs"] + 1
    with pytest.raises(FileExistsError, match="exists"):
        experiment.train_and_evaluate(config, str(out), verbose=0)


def test_mobile_only_export_never_runs_tflite_micro(tmp_path, monkeypatch):
    from hypersparse_tf.export import micro

    def no_micro(*args, **kwargs):
        raise AssertionError("TFLite Micro was used")

    monkeypatch.setattr(micro, "run_micro", no_micro)
    monkeypatch.setattr(micro, "micro_arena_size", no_micro)
    config = experiment.Config(**TINY, max_epochs=60, export=("mobile",))
    out = tmp_path / "run"
    summary = experiment.train_and_evaluate(config, str(out), verbose=0)
    rows = [r["artifact"] for r in summary["deployment_report"]["artifacts"]]
    assert rows == ["keras", "mobile_float", "mobile_sparse"]
    assert "micro_test_accuracy" not in summary
    assert (out / "mobile_sparse.tflite").exists()
    assert not (out / "micro_int8.tflite").exists()


def test_presets_carry_the_reference_settings():
    assert len(experiment.PRESETS) == 18
    preset = experiment.PRESETS["resnet32_cifar10_995"]
    assert preset["prune_rate"] == 0.995 and preset["model"] == "resnet32"
    assert experiment.PRESETS["vgg19_tinyimagenet_98"]["model"] == "vgg19_bn"
    for preset in experiment.PRESETS.values():
        assert (preset["warmup_epochs"], preset["lambda_init"], preset["eta"]) == (
            60,
            5e-6,
            1.05,
        )
        assert preset["finetune_epochs"] == 160 and preset["batch_size"] == 64
        assert preset["weight_decay_mode"] == "coupled"  # PyTorch's SGD
        assert (preset["batchnorm_momentum"], preset["batchnorm_epsilon"]) == (
            0.9,
            1e-5,
        )
        assert preset["kernel_initializer"] == "reference"
        assert preset["symmetric_padding"] == preset["model"].startswith("resnet")
        assert preset["augment"] is True  # the pruned copy: augmented data
        assert preset["recalibrate_batchnorm"] == 0  # dense BatchNorm statistics
        experiment.check_config(experiment.Config(**preset))


@pytest.mark.parametrize(
    "changes, argument",
    [
        (dict(weight_decay_mode="l2"), "weight_decay_mode"),
        (dict(batchnorm_momentum=0.9), "batchnorm_momentum"),  # small_cnn
        (dict(model="vgg19_bn", symmetric_padding=True), "symmetric_padding"),
        (dict(model="resnet20", batchnorm_epsilon=0.0), "batchnorm_epsilon"),
        (dict(model="resnet20", symmetric_padding="yes"), "symmetric_padding"),
        (dict(strategy="multi_worker"), "strategy"),  # Keras 3's fit cannot
    ],
)
def test_reference_settings_bad_values_are_refused(changes, argument, tmp_path):
    config = experiment.Config(**changes)
    with pytest.raises((ValueError, TypeError), match=f"argument `{argument}`"):
        experiment.train_and_evaluate(config, str(tmp_path / "run"), verbose=0)
    assert not (tmp_path / "run").exists()


def _config(*argv):
    flags.FLAGS.unparse_flags()
    flags.FLAGS(["train.py", *argv])
    return train_script.config_from_flags()


def test_script_flags_and_presets():
    config = _config()
    assert config == experiment.Config()
    config = _config("--preset=resnet32_cifar100_90", "--finetune_epochs=3")
    assert config.model == "resnet32" and config.dataset == "cifar100"
    assert config.finetune_epochs == 3 and config.lambda_init == 5e-6


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--preset=resnet99_mnist_90"], "resnet32_cifar10_90"),
        (["--model=alexnet"], "small_cnn"),
        (["--regularizer=l0"], "<hs|l1|l2>"),
        (["--strategy=horovod"], "mirrored"),
        (["--export=phone"], "'mobile', 'micro'"),
    ],
)
def test_script_unknown_choices_are_refused_by_the_flag_parser(argv, message):
    with pytest.raises(flags.IllegalFlagValueError, match=message):
        _config(*argv)


def test_script_bad_prune_rate_is_the_library_error():
    with pytest.raises(ValueError, match="argument `prune_rate`"):
        _config("--prune_rate=1.5")


@pytest.mark.parametrize(
    "argv, argument",
    [
        (["--epoch_budget=30"], "epoch_budget"),  # < 10 + 1 + 20
        (["--epoch_budget=301"], "epoch_budget"),  # > max_epochs 300
        (["--recalibrate_batchnorm=-1"], "recalibrate_batchnorm"),
    ],
)
def test_script_bad_budget_and_recalibration_are_library_errors(
    argv, argument, tmp_path
):
    with pytest.raises(ValueError, match=f"argument `{argument}`"):
        _config(*argv)
    config = experiment.Config(
        **{argv[0][2:].split("=")[0]: int(argv[0].split("=")[1])}
    )
    with pytest.raises(ValueError, match=f"argument `{argument}`"):
        experiment.train_and_evaluate(config, str(tmp_path / "run"), verbose=0)
    assert not (tmp_path / "run").exists()


def test_budget_and_recalibration_reach_art(tmp_path):
    config = experiment.Config(
        **TINY,
        max_epochs=60,
        epoch_budget=12,
        recalibrate_batchnorm=64,
        augment=True,
        weight_decay_mode="coupled",
        export=(),
    )
    summary = experiment.train_and_evaluate(config, str(tmp_path / "run"), verbose=0)
    assert summary["phase"] == "done" and summary["epochs"] == 12
    assert summary["pruned_accuracy_data"] == "training set, shuffled and augmented"
    # The last and the best fine-tuning epoch's test accuracy, both reported.
    history = json.loads((tmp_path / "run" / "art_history.json").read_text())
    finetune = [h for h in history if h["phase"] == "finetune"]
    accuracies = summary["finetune_test_accuracies"]
    assert len(accuracies) == len(finetune) == 12 - 2 - summary["art_epochs"]
    assert summary["sparse_test_accuracy"] == accuracies[-1]
    assert summary["best_finetune_test_accuracy"] == max(accuracies)
    best_epoch = summary["best_finetune_epoch"]
    assert accuracies[[h["epoch"] for h in finetune].index(best_epoch)] == max(
        accuracies
    )
    config = _config("--epoch_budget=40", "--recalibrate_batchnorm=256")
    assert config.epoch_budget == 40 and config.recalibrate_batchnorm == 256


def test_unknown_dataset_lists_the_choices(tmp_path):
    config = experiment.Config(dataset="no_such_data_set_here")
    with pytest.raises(ValueError, match="digits"):
        experiment.train_and_evaluate(config, str(tmp_path / "run"), verbose=0)
    assert not (tmp_path / "run").exists()


def test_script_with_default_flags_writes_every_file(tmp_path):
    out = tmp_path / "default"
    budget = [f"--{k}={v}" for k, v in TINY.items()]  # CI's smaller budget
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "train.py"), f"--output_dir={out}"]
        + budget,
        capture_output=True,
        text=True,
        timeout=900,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "| ART epochs to termination |" in result.stdout
    for name in RUN_FILES:
        assert (out / name).exists(), name
    again = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "train.py"), f"--output_dir={out}"],
        capture_output=True,
        text=True,
        timeout=300,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
    )
    assert again.returncode != 0
    assert "--overwrite" in again.stderr


MIRRORED_SCRIPT = r"""
import json
import sys
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(
    cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
from hypersparse_tf import experiment
config = experiment.Config(**json.loads(sys.argv[1]))
summary = experiment.train_and_evaluate(config, sys.argv[2], verbose=0)
print(json.dumps({k: summary[k] for k in ("phase", "sparsity", "replicas")}))
"""


def test_train_and_evaluate_under_mirrored_strategy_with_two_replicas(tmp_path):
    settings = dict(TINY, max_epochs=60, strategy="mirrored", export=[])
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            MIRRORED_SCRIPT,
            json.dumps(settings),
            str(tmp_path / "run"),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["replicas"] == 2  # two CPU replicas, the batch split
    assert summary["phase"] == "done"
    assert summary["sparsity"] == math.floor(0.95 * 6032) / 6032


def test_make_strategy_choices():
    import tensorflow as tf

    assert experiment.make_strategy("default") is tf.distribute.get_strategy()
    assert isinstance(
        experiment.make_strategy("mirrored"), tf.distribute.MirroredStrategy
    )
    with pytest.raises(ValueError, match="argument `strategy`"):
        experiment.make_strategy("horovod")


SEEDED_RUN = r"""
import sys
from hypersparse_tf import experiment
config = experiment.Config(
    warmup_epochs=2, lambda_init=2e-3, eta=1.5, finetune_epochs=2, max_epochs=60,
    seed=int(sys.argv[2]), export=(),
)
experiment.train_and_evaluate(config, sys.argv[1], verbose=0)
"""


def test_same_seed_in_two_processes_gives_identical_runs(tmp_path):
    def run(name, seed):
        result = subprocess.run(
            [sys.executable, "-c", SEEDED_RUN, str(tmp_path / name), str(seed)],
            capture_output=True,
            text=True,
            timeout=600,
            env=dict(os.environ, PYTHONPATH=str(ROOT)),
        )
        assert result.returncode == 0, result.stderr[-3000:]
        masks = np.load(tmp_path / name / "masks.npz")
        history = json.loads((tmp_path / name / "art_history.json").read_text())
        return {k: masks[k] for k in masks.files}, history

    masks_a, history_a = run("a", 3)
    masks_b, history_b = run("b", 3)
    np.testing.assert_equal(history_a, history_b)  # every number, NaN == NaN
    assert masks_a.keys() == masks_b.keys()
    for key in masks_a:
        np.testing.assert_array_equal(masks_a[key], masks_b[key])
    _, history_c = run("c", 4)
    accuracies = [
        [h["accuracy"] for h in history] for history in (history_a, history_c)
    ]
    assert accuracies[0] != accuracies[1]  # the seed matters


def test_channel_structure_end_to_end_makes_the_board_model_smaller(tmp_path):
    config = experiment.Config(
        **TINY, max_epochs=60, prune_rate=0.5, structure="channel", export=("micro",)
    )
    summary = experiment.train_and_evaluate(config, str(tmp_path / "run"), verbose=0)
    assert summary["phase"] == "done"
    masks = np.load(tmp_path / "run" / "masks.npz")
    removed = {
        k: int((~masks[k].reshape(-1, masks[k].shape[-1]).any(axis=0)).sum())
        for k in masks.files
        if k.endswith("kernel")
    }
    assert sum(removed.values()) == 24  # floor(0.5 * (16 + 32)) channels
    for block in (1, 2):  # the BatchNorm of a removed channel is masked too
        kernel = masks[f"block{block}_conv/kernel"]
        for name in ("gamma", "beta"):
            np.testing.assert_array_equal(
                masks[f"block{block}_bn/{name}"], kernel.any(axis=(0, 1, 2))
            )
    rows = {r["artifact"]: r for r in summary["deployment_report"]["artifacts"]}
    assert rows["micro_int8_shrunk"]["bytes"] < 0.8 * rows["micro_int8"]["bytes"]
    assert rows["micro_int8_shrunk"]["arena_bytes"] < rows["micro_int8"]["arena_bytes"]
    assert rows["micro_int8_shrunk"]["agreement"] >= 0.95


@pytest.mark.parametrize(
    "changes, argument",
    [
        (dict(structure="filters"), "structure"),
        (dict(structure="block", block_size=1), "block_shape"),
        (dict(structure="channel", regularizer="l1"), "structure"),
    ],
)
def test_structure_bad_settings_are_refused(changes, argument, tmp_path):
    with pytest.raises(ValueError, match=f"argument `{argument}`"):
        experiment.train_and_evaluate(
            experiment.Config(**changes), str(tmp_path / "run"), verbose=0
        )
    assert not (tmp_path / "run").exists()
