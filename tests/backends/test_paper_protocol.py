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
            "--max_epochs=8",
            "--width=4",
            *flags,
        ],
        capture_output=True,
        text=True,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
        check=False,
    )


@pytest.mark.skipif(
    not ARCHIVE.exists(), reason=f"needs {ARCHIVE} (the shared CIFAR-10 JPEGs)"
)
def test_paper_protocol_runs_every_phase_and_resumes(tmp_path):
    out = tmp_path / "run"
    first = _run(out, "--max_minutes=0.001")  # stops after epoch 0
    assert first.returncode == 0, first.stderr[-3000:]
    assert "time limit reached after epoch 0" in first.stderr
    second = _run(out)
    assert second.returncode == 0, second.stderr[-3000:]
    with (out / "history.csv").open() as f:
        rows = list(csv.DictReader(f))
    epochs = [int(r["epoch"]) for r in rows]
    assert epochs == list(range(len(rows)))  # resumed at 1, nothing repeated
    phases = [r["phase"] for r in rows]
    assert phases[0] == "warmup" and phases[-1] in ("finetune", "done")
    summary = json.loads((out / "summary.json").read_text())
    assert summary["phase"] == "done"
    assert summary["backend"] == keras.backend.backend()
    assert summary["sparsity"] == pytest.approx(0.9, abs=1e-4)
    assert summary["published"] == 94.22
    assert "| published (the paper) | 94.22% |" in (out / "summary.md").read_text()
    assert (out / "history.png").stat().st_size > 0
