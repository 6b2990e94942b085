"""ART's backup folder: model, optimizer and ART's own state, swapped in whole.

The model's weights and the optimizer's state are written by Keras' own code:
`model.save_weights` to a `.weights.h5` file for a Keras 3 model (its format
holds the optimizer's variables too, on every Keras backend), and a
`tf.train.Checkpoint` of the model and its optimizer for a tf_keras model
(whose `.weights.h5` leaves out the variables of its legacy optimizers).
ART's own state (counters, history, buffer accuracies) is a JSON file beside
them, and its candidates' weights and masks an `.npz` file.

A backup is written into `state.new/` and renamed to `state/` only when
complete; the one before it is kept as `state.prev/`. A process killed at any
moment leaves a complete backup, and the previous epoch's is there too: a
resumed `fit` whose own checkpoint (tf_keras's `BackupAndRestore`) is one
epoch older than ART's takes that one (`ART` chooses at the first epoch). Keras'
`BackupAndRestore` is not used for the model: it writes its weights and its
epoch number as two files, not atomically, and has no place for ART's state.
"""

import json
import os
import shutil

import numpy as np

from hypersparse_tf import prunable

_STATE = "state"
_KERAS_WEIGHTS = "model.weights.h5"
_TF_KERAS_CHECKPOINT = "model_checkpoint"


class ARTBackup:
    """Writes, reads and deletes one backup folder.

    Args:
        directory: String. The folder; created on the first write.
    """

    def __init__(self, directory):
        self.directory = os.fspath(directory)

    def _folder(self, name):
        return os.path.join(self.directory, name)

    def write(self, model, state, candidates, masks):
        """Writes one complete backup.

        Args:
            model: The compiled model; its weights and optimizer state are
                saved.
            state: Dict of JSON values.
            candidates: Dict `{epoch: {"weights": [array], "masks": {key:
                array}}}`, ART's candidates.
            masks: Dict `{key: array}` or None, the fine-tuning masks.
        """
        arrays = {}
        for epoch, payload in candidates.items():
            for i, weight in enumerate(payload["weights"]):
                arrays[f"epoch{epoch}/weight{i}"] = weight
            for key, mask in payload["masks"].items():
                arrays[f"epoch{epoch}/mask/{key}"] = mask
        for key, mask in (masks or {}).items():
            arrays[f"masks/{key}"] = mask
        state = dict(state, candidate_epochs=sorted(candidates))
        os.makedirs(self.directory, exist_ok=True)
        new = self._folder(_STATE + ".new")
        shutil.rmtree(new, ignore_errors=True)
        os.makedirs(new)
        if prunable.is_tf_keras(model):
            import tensorflow as tf

            checkpoint = tf.train.Checkpoint(model=model, optimizer=model.optimizer)
            checkpoint.write(os.path.join(new, _TF_KERAS_CHECKPOINT))
        else:
            model.save_weights(os.path.join(new, _KERAS_WEIGHTS))
        np.savez(os.path.join(new, "arrays.npz"), **arrays)
        with open(os.path.join(new, "state.json"), "w") as f:
            json.dump(state, f)
        current, previous = self._folder(_STATE), self._folder(_STATE + ".prev")
        if os.path.isdir(current):
            shutil.rmtree(previous, ignore_errors=True)
            os.rename(current, previous)
        os.rename(new, current)

    def generations(self):
        """The folders of the complete backups, newest first (at most two)."""
        return [
            folder
            for folder in (self._folder(_STATE), self._folder(_STATE + ".prev"))
            if os.path.isfile(os.path.join(folder, "state.json"))
        ]

    def latest(self):
        """The folder of the newest complete backup, or None."""
        found = self.generations()
        return found[0] if found else None

    def read(self, folder=None):
        """A backup as `(state, candidates, masks, folder)`: the newest, or
        the one in `folder`; None when there is none.

        `state`, `candidates` and `masks` are what `write` was given; the
        model's weights are loaded from `folder` by `restore_model`.
        """
        folder = self.latest() if folder is None else folder
        if folder is None:
            return None
        with open(os.path.join(folder, "state.json")) as f:
            state = json.load(f)
        with np.load(os.path.join(folder, "arrays.npz")) as data:
            arrays = {name: data[name] for name in data.files}
        candidates = {}
        for epoch in state.pop("candidate_epochs"):
            prefix = f"epoch{epoch}/"
            count = sum(1 for n in arrays if n.startswith(prefix + "weight"))
            candidates[epoch] = {
                "weights": [arrays[f"{prefix}weight{i}"] for i in range(count)],
                "masks": {
                    name[len(prefix) + 5 :]: value
                    for name, value in arrays.items()
                    if name.startswith(prefix + "mask/")
                },
            }
        masks = {n[6:]: v for n, v in arrays.items() if n.startswith("masks/")}
        return state, candidates, masks or None, folder

    @staticmethod
    def restore_model(model, folder):
        """Loads the weights and optimizer state saved in `folder` into
        `model`, whose optimizer must be built."""
        if prunable.is_tf_keras(model):
            import tensorflow as tf

            checkpoint = tf.train.Checkpoint(model=model, optimizer=model.optimizer)
            status = checkpoint.read(os.path.join(folder, _TF_KERAS_CHECKPOINT))
            status.assert_existing_objects_matched()
        else:
            model.load_weights(os.path.join(folder, _KERAS_WEIGHTS))

    def delete(self):
        """Removes the backup folder."""
        if os.path.isdir(self.directory):
            shutil.rmtree(self.directory)
