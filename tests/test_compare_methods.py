"""The method comparison benchmark: its verdicts and a tiny end-to-end run."""

import json
import math
import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import compare_methods  # noqa: E402

FASHION_MNIST = pathlib.Path("/usr/share/datasets/fashion-mnist")


def _run(tmp_path, *args):
    env = dict(os.environ, PYTHONPATH=str(ROOT), TF_CPP_MIN_LOG_LEVEL="3")
    return subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "compare_methods.py"), *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_verdict_needs_a_margin_and_every_seed():
    assert compare_methods.verdict([0.90, 0.91], [0.80, 0.81])[0] == "win"
    assert compare_methods.verdict([0.80, 0.81], [0.90, 0.91])[0] == "loss"
    # 0.3 points apart: below the 0.5-point floor.
    word, difference = compare_methods.verdict([0.803, 0.803], [0.80, 0.80])
    assert word == "tie" and difference == pytest.approx(0.003)
    # 2 points apart, but the seeds spread more than that.
    assert compare_methods.verdict([0.70, 0.90], [0.79, 0.79])[0] == "tie"
    # 1.5 points apart with no spread: above the floor.
    assert compare_methods.verdict([0.815, 0.815], [0.80, 0.80])[0] == "win"
    assert compare_methods.verdict([0.9], [])[0] == "-"


def test_lr_factor_drops_at_half_and_three_quarters():
    # The schedule of ART's fine-tuning, which every method's fine-tuning uses.
    from hypersparse_tf.art_schedule import finetune_lr_factor

    factors = [finetune_lr_factor(e, 10) for e in range(10)]
    assert factors == pytest.approx([1] * 5 + [0.1] * 3 + [0.01] * 2)


@pytest.mark.skipif(
    not FASHION_MNIST.is_dir(),
    reason="Fashion-MNIST not installed: apt-get install -y dataset-fashion-mnist",
)
def test_tiny_run_writes_table_plot_and_exact_sparsity(tmp_path):
    out = tmp_path / "results"
    args = [
        "--settings=fmnist_lenet",
        "--train_size=300",
        "--test_size=200",
        "--warmup_epochs=1",
        "--budget_epochs=4",
        "--finetune_epochs=1",
        "--sparsities=0.9",
        "--seeds=0",
        "--jobs=1",
        f"--output_dir={out}",
    ]
    result = _run(tmp_path, *args)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((out / "compare_methods.json").read_text())
    rows = report["jobs"][0]["rows"]
    by_method = {r["method"]: r for r in rows}
    # LeNet has no BatchNorm: BN recalibration would change nothing, no run.
    methods = set(compare_methods.METHODS) - {"art_hs_bn"}
    assert set(by_method) == {"warmup", "dense", *methods}
    n = by_method["dense"]["prunable_weights"]
    assert n == 266200
    assert by_method["dense"]["sparsity"] < 0.01
    for method in ("art_hs", "art_l1", "art_l2", "oneshot"):
        row = by_method[method]
        # Global magnitude masks remove exactly floor(kappa * N) weights.
        assert row["sparsity"] * n == pytest.approx(math.floor(0.9 * n), abs=0.5)
        assert row["epochs"] == 4
    # tfmot prunes each layer to the target, rounding per layer.
    assert abs(by_method["tfmot_gmp"]["sparsity"] - 0.9) < 1e-3
    for method, row in by_method.items():
        if method != "warmup":
            correct = row["test_accuracy"] * 200  # a share of the test images
            assert correct == pytest.approx(round(correct), abs=1e-3)  # float32
            assert row["seed"] == 0 and row["setting"] == "fmnist_lenet"
    assert by_method["dense"]["test_accuracy"] > 0.3  # chance is 0.1
    for method in ("art_hs", "art_l1", "art_l2"):
        row = by_method[method]
        assert 1 <= row["art_epochs"] <= 2
        assert row["art_epochs"] == 2 or not row["stopped_by_budget"]
    markdown = (out / "compare_methods.md").read_text()
    assert "benchmarks/compare_methods.py --settings=fmnist_lenet" in markdown
    assert "| 90% | ART + HyperSparse |" in markdown
    assert (out / "compare_methods.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # --replot redraws both from the JSON alone, training nothing.
    (out / "compare_methods.png").unlink()
    (out / "compare_methods.md").unlink()
    result = _run(tmp_path, "--replot", f"--output_dir={out}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert (out / "compare_methods.md").read_text() == markdown
    assert (out / "compare_methods.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bad_flags_are_usage_errors(tmp_path):
    result = _run(tmp_path, "--settings=nope", f"--output_dir={tmp_path}")
    assert result.returncode != 0
    assert "Unknown --settings ['nope']" in result.stderr
    result = _run(tmp_path, "--gpu_paper", "--budget_epochs=100")
    assert result.returncode != 0
    assert "budget_epochs=100 leaves no ART epoch" in result.stderr
    assert "221" in result.stderr
    result = _run(tmp_path, "--sparsities=0.9,1.5")
    assert "--sparsities must lie in (0, 1)" in result.stderr


CIFAR = ROOT.parent / "shared" / "data" / "cifar10-jpeg.tar.gz"


@pytest.mark.skipif(
    not CIFAR.exists(), reason=f"CIFAR-10 JPEG archive not found at {CIFAR}"
)
def test_reference_switches_reach_the_run_and_the_report(tmp_path):
    out = tmp_path / "results"
    args = [
        "--settings=cifar10_resnet",
        "--train_size=100",
        "--test_size=100",
        "--warmup_epochs=1",
        "--budget_epochs=4",
        "--finetune_epochs=2",
        "--sparsities=0.9",
        "--seeds=0",
        "--jobs=1",
        "--methods=art_hs",
        "--eval_augmented",
        "--weight_decay_mode=coupled",
        "--reference_batchnorm",
        "--reference_architecture",
        f"--output_dir={out}",
    ]
    result = _run(tmp_path, *args)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((out / "compare_methods.json").read_text())
    setting = report["settings"]["cifar10_resnet"]
    assert setting["eval_augmented"] and setting["reference_batchnorm"]
    assert setting["weight_decay_mode"] == "coupled"
    rows = {r["method"]: r for r in report["jobs"][0]["rows"]}
    art = rows["art_hs"]
    finetune = art["finetune_test_accuracy_history"]
    assert len(finetune) == 3 - art["art_epochs"]  # fine-tuning fills the budget
    assert art["best_finetune_test_accuracy"] == max([*finetune, art["test_accuracy"]])
    assert finetune[-1] == pytest.approx(art["test_accuracy"], abs=1e-6)
    assert len(rows["dense"]["finetune_test_accuracy_history"]) == 3
    markdown = (out / "compare_methods.md").read_text()
    assert "weight decay 0.0001 (coupled)" in markdown
    assert "Reference switches: eval_augmented=True, weight_decay_mode=coupled" in (
        markdown
    )
