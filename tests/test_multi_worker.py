"""ART under MultiWorkerMirroredStrategy: two worker processes on this machine,
the same masks and statistics on both, and a SIGKILL mid-ART survived."""

import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

pytest.importorskip(
    "tf_keras", reason='tf_keras not installed: pip install "hypersparse_tf[tfmot]"'
)

ROOT = pathlib.Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "examples" / "multi_worker.py"


def _ports(count):
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def _start(out):
    workers = ",".join(f"127.0.0.1:{port}" for port in _ports(2))
    env = dict(os.environ, PYTHONPATH=str(ROOT), TF_CPP_MIN_LOG_LEVEL="3")
    env.pop("TF_USE_LEGACY_KERAS", None)
    return [
        subprocess.Popen(
            [sys.executable, str(SCRIPT), f"--workers={workers}", f"--index={i}"]
            + [f"--output_dir={out}"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]


def _wait(processes, timeout=600):
    for process in processes:
        _, err = process.communicate(timeout=timeout)
        assert process.returncode == 0, err[-3000:]


def _results(out):
    reports = [json.loads((out / f"worker{i}.json").read_text()) for i in range(2)]
    masks = []
    for i in range(2):
        with np.load(out / f"masks{i}.npz") as data:
            masks.append({k: data[k] for k in data.files})
    return reports, masks


def _assert_same_masks(first, second):
    assert first.keys() == second.keys() and first
    for key in first:
        np.testing.assert_array_equal(first[key], second[key])


@pytest.mark.slow
def test_art_multi_worker_agrees_and_survives_a_killed_worker(tmp_path):
    # An uninterrupted run.
    whole = tmp_path / "whole"
    _wait(_start(whole))
    reports, masks = _results(whole)
    for report in reports:
        assert report["phase"] == "done"
        # Exactly floor(0.9 N) of LeNet-300-100's 50,200 kernel weights.
        assert report["sparsity"] == pytest.approx(45180 / 50200, abs=1e-12)
    for key in ("threshold", "scale", "ratio", "coefficient", "mask_variables"):
        assert reports[0][key] == reports[1][key], key
    assert reports[0]["coefficient"] == 0.0
    assert sum(reports[0]["mask_variables"].values()) == 50200 - 45180
    np.testing.assert_equal(reports[0]["history"], reports[1]["history"])
    _assert_same_masks(*masks)

    # The same run, worker 1 killed with SIGKILL in the middle of ART, then
    # both restarted with the same flags.
    broken = tmp_path / "broken"
    processes = _start(broken)
    state = broken / "art_backup" / "worker1" / "state" / "state.json"
    deadline = time.time() + 600
    while time.time() < deadline:
        try:
            schedule = json.loads(state.read_text())["schedule"]
        except (OSError, ValueError, KeyError):
            schedule = None
        if schedule and schedule["phase"] == "art" and schedule["art_epochs_done"] >= 2:
            break
        assert all(p.poll() is None for p in processes), "a worker ended early"
        time.sleep(0.05)
    else:
        pytest.fail("ART did not reach its third epoch")
    processes[1].send_signal(signal.SIGKILL)
    processes[0].send_signal(signal.SIGKILL)
    for process in processes:
        process.communicate(timeout=60)
    assert processes[1].returncode == -signal.SIGKILL
    assert not (broken / "worker1.json").exists()
    _wait(_start(broken))
    resumed, resumed_masks = _results(broken)
    phases = [h["phase"] for h in reports[0]["history"]]
    for report in resumed:
        # Resumed from the backups, not trained again from the start.
        assert 0 < report["epochs_this_process"] <= len(phases) - 3
        assert [h["phase"] for h in report["history"]] == phases
        assert report["termination_epoch"] == reports[0]["termination_epoch"]
        assert report["sparsity"] == reports[0]["sparsity"]
    np.testing.assert_equal(resumed[0]["history"], reports[0]["history"])
    _assert_same_masks(resumed_masks[0], masks[0])
    _assert_same_masks(resumed_masks[1], masks[0])
