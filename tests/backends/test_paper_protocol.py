"""`benchmarks/paper_protocol.py` on a tiny CIFAR-10 slice, on the running
backend: every phase, the table, and resuming after a time limit."""

import csv
import json
import os
import pathlib
import subprocess
import sys
import tempfile

import keras
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
ARCHIVE = ROOT.parent / "shared" / "data" / "cifar10-jpeg.tar.gz"
# Decoded once per machine, shared by the backends' test processes.
CACHE = pathlib.Path(tempfile.gettempdir()) / "hypersparse_tf_cifar10_npy"


def _run(out, *flags):
    return subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "paper_protocol.py"),
            f"--archive={ARCHIVE}",
            f"--cache_dir={CACHE}",
            f"--output_dir={out}",
            "--train_size=256",
            "--test_size=128",
            "--warmup_epochs=1",
            "--finetune_epochs=1",
            # ART ends by its rule or, at the latest, after 2 epochs.
            "--epoch_budget=4",
            "--max_epochs=8",
            "--width=4",
            *flags,
        ],
        capture_output=True,
        text=True,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
        check=False,
    )


def _history(out):
    with (out / "history.csv").open() as f:
        return list(csv.DictReader(f))


@pytest.mark.skipif(
    not ARCHIVE.exists(), reason=f"needs {ARCHIVE} (the shared CIFAR-10 JPEGs)"
)
def test_paper_protocol_runs_every_phase_and_resumes_as_if_never_stopped(tmp_path):
    whole = _run(tmp_path / "whole")
    assert whole.returncode == 0, whole.stderr[-3000:]
    out = tmp_path / "run"
    first = _run(out, "--max_minutes=0.001")  # stops after epoch 0
    assert first.returncode == 0, first.stderr[-3000:]
    assert "time limit reached after epoch 0" in first.stderr
    assert [r["epoch"] for r in _history(out)] == ["0"]
    second = _run(out)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "ART resumed from" in second.stdout + second.stderr

    rows = _history(out)
    epochs = [int(r["epoch"]) for r in rows]
    assert epochs == list(range(len(rows)))  # resumed at 1, nothing repeated
    phases = [r["phase"] for r in rows]
    assert phases[0] == "warmup" and "art" in phases and phases[-1] == "finetune"
    # The same batches, weights, optimizer and ART state after the resume:
    # the history of the run that never stopped, to float round-off.
    expected = _history(tmp_path / "whole")
    assert [r["phase"] for r in expected] == phases
    for got, want in zip(rows, expected, strict=True):
        for key in ("coefficient", "sparsity", "loss", "train_accuracy"):
            assert float(got[key]) == pytest.approx(float(want[key]), rel=1e-5), (
                got["epoch"],
                key,
            )
        for key in ("pruned_accuracy", "test_accuracy"):
            assert got[key] == want[key] or float(got[key]) == pytest.approx(
                float(want[key]), abs=1 / 128
            ), (got["epoch"], key)

    summary = json.loads((out / "summary.json").read_text())
    assert summary["phase"] == "done"
    assert summary["backend"] == keras.backend.backend()
    assert summary["sparsity"] == pytest.approx(0.9, abs=1e-4)
    assert summary["art_epochs"] == phases.count("art") <= 2
    assert summary["published"] == 94.22
    # Width 4: stem 27w, dense 40w, and 1,810 w^2 in the 3x3 and 1x1 kernels
    # (at the default width 32: 1,855,584, the paper's count).
    assert summary["prunable_weights"] == 27 * 4 + 40 * 4 + 1810 * 4**2
    assert "| published (the paper) | 94.22% |" in (out / "summary.md").read_text()
    assert (out / "history.png").stat().st_size > 0
