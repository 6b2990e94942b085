"""One table of every artifact of a model: size, arena, accuracy, agreement."""

import gzip
import os
import tempfile

import numpy as np

from hypersparse_tf import prunable
from hypersparse_tf import validation
from hypersparse_tf.export import conversion
from hypersparse_tf.export import flatbuffer
from hypersparse_tf.export import litert
from hypersparse_tf.export import micro


def _gzip_size(data):
    return len(gzip.compress(data, compresslevel=9, mtime=0))


def _keras_size(model):
    """Bytes of the `.keras` file of the model alone, without optimizer state."""
    if getattr(model, "optimizer", None) is not None:
        # A fresh model from the config: `clone_model` would compile it again.
        copy = model.__class__.from_config(model.get_config())
        copy.set_weights(model.get_weights())
        model = copy
    with tempfile.TemporaryDirectory() as directory:
        path = os.path.join(directory, "model.keras")
        model.save(path)
        with open(path, "rb") as f:
            data = f.read()
    return len(data), _gzip_size(data)


def _keras_nonzero(model):
    return int(sum(np.count_nonzero(w.numpy()) for w in model.weights))


ARTIFACTS = {
    "mobile": ("mobile_float", "mobile_sparse"),
    "micro": ("micro_int8", "micro_int8_shrunk"),
}


def _check_targets(targets):
    if isinstance(targets, str) or not targets:
        raise ValueError(
            validation.invalid(
                "targets", f"a non-empty tuple of {list(conversion.TARGETS)}", targets
            )
        )
    for target in targets:
        validation.check_choice(target, "targets", conversion.TARGETS)
    return tuple(t for t in conversion.TARGETS if t in targets)


def convert_artifacts(
    model, representative_data=None, targets=conversion.TARGETS, verify_inputs=None
):
    """Converts a model to the artifacts of `targets`, each verified by running.

    - `"mobile"`: `mobile_float` (float32, dense encoding) and `mobile_sparse`
      (float32, sparse encoding), for LiteRT;
    - `"micro"`: `micro_int8` (full int8 of the model) and `micro_int8_shrunk`
      (full int8 of `shrink(model)`: what a board should get), for TFLite
      Micro.

    Args:
        model: A built Keras 3 model.
        representative_data: Calibration inputs of the micro models (see
            `to_tflite`); needed with `"micro"`. Defaults to `None`.
        targets: Tuple of `"mobile"` and/or `"micro"`. Defaults to both.
        verify_inputs: Inputs on which `shrink` checks that the shrunk model
            gives the same outputs. Defaults to `None`: a few samples of
            `representative_data`.

    Returns:
        Dict `{artifact name: TFLite bytes}`.
    """
    from hypersparse_tf.shrink import shrink

    targets = _check_targets(targets)
    artifacts = {}
    if "mobile" in targets:
        for sparse, name in zip((False, True), ARTIFACTS["mobile"], strict=True):
            artifacts[name] = conversion.to_tflite(model, "mobile", sparse=sparse)
    if "micro" in targets:
        if verify_inputs is None and not callable(representative_data):
            verify_inputs = np.asarray(representative_data, np.float32)[:64]
        shrunk = shrink(model, verify_inputs=verify_inputs)
        artifacts["micro_int8"] = conversion.to_tflite(
            model, "micro", representative_data
        )
        artifacts["micro_int8_shrunk"] = conversion.to_tflite(
            shrunk, "micro", representative_data
        )
    return artifacts


def deployment_report(
    model,
    representative_data,
    x,
    y,
    name=None,
    targets=conversion.TARGETS,
    artifacts=None,
):
    """Sizes, arena, accuracy and agreement of every artifact of a model.

    Rows: the Keras model (`.keras` file without optimizer state, its non-zero
    parameters counted over all its weights), then the artifacts of
    `targets` (see `convert_artifacts`): `mobile_float`, `mobile_sparse`,
    `micro_int8` and `micro_int8_shrunk`. Each is run once on `x` in its
    interpreter; the TFLite Micro arena of each micro artifact is found once.

    Args:
        model: A built Keras 3 Sequential or functional classifier with one
            input and one output (scores or probabilities per class).
        representative_data: Calibration inputs for the micro models (see
            `to_tflite`); unused when `artifacts` holds them or `targets` has
            no `"micro"`.
        x: Float array `(num_samples, *input_shape)`. Evaluation inputs.
        y: Int array `(num_samples,)`. Their class labels.
        name: Optional string naming the model in the report. Defaults to
            `None`: the model's name.
        targets: Tuple of `"mobile"` and/or `"micro"`. Defaults to both.
        artifacts: Dict `{artifact name: TFLite bytes}` already converted, as
            `convert_artifacts` returns; those of `targets` that are missing
            are converted here. Defaults to `None`.

    Returns:
        Dict with `"model"`, `"num_samples"` and `"artifacts"`: a list of dicts
        with `artifact`, `bytes`, `gzip_bytes`, `nonzero_parameters`,
        `arena_bytes` (micro only, else `None`), `parameters` (values
        stored, zeros included; the Keras model's `count_params()`), `macs` (dense
        multiply-accumulates of one inference: `model_cost` for the Keras
        model, `inspect_tflite` for the others; `micro_int8_shrunk` shows
        what `shrink` removed), `accuracy`, `agreement` (the
        fraction of samples whose argmax equals the Keras model's) and
        `max_abs_diff` (largest difference of outputs to the Keras model's).
        Render it with `report_markdown`.
    """
    prunable.check_model(model)
    targets = _check_targets(targets)
    wanted = [a for target in targets for a in ARTIFACTS[target]]
    artifacts = dict(artifacts or {})
    unknown = sorted(set(artifacts) - set(wanted))
    if unknown:
        raise ValueError(
            validation.invalid(
                "artifacts", f"a dict with keys among {wanted}", sorted(artifacts)
            )
        )
    x = np.asarray(x, np.float32)
    y = np.asarray(y)
    if y.shape != (len(x),):
        raise ValueError(
            "Invalid value for argument `y`. Expected integer labels of shape "
            f"({len(x)},), one per sample of `x`. Received: shape {y.shape}"
        )
    missing = tuple(t for t in targets if any(a not in artifacts for a in ARTIFACTS[t]))
    if missing:
        converted = convert_artifacts(model, representative_data, missing, x[:64])
        artifacts = {**converted, **artifacts}
    reference = np.asarray(model.predict(x, verbose=0, batch_size=256), np.float32)
    keras_bytes, keras_gzip = _keras_size(model)
    rows = [
        _row("keras", keras_bytes, keras_gzip, _keras_nonzero(model), None)
        | {"macs": _keras_macs(model), "parameters": int(model.count_params())}
        | _quality(reference, reference, y)
    ]
    for artifact in wanted:
        tflite_bytes = artifacts[artifact]
        on_micro = artifact.startswith("micro")
        if on_micro:
            outputs = micro.run_micro(tflite_bytes, x)
        else:
            outputs = litert.run_tflite(tflite_bytes, x)
        info = flatbuffer.inspect_tflite(tflite_bytes)
        rows.append(
            _row(
                artifact,
                len(tflite_bytes),
                _gzip_size(tflite_bytes),
                info["nonzero_parameters"],
                micro.micro_arena_size(tflite_bytes) if on_micro else None,
            )
            | {"macs": info["macs"], "parameters": info["parameters"]}
            | _quality(outputs.reshape(reference.shape), reference, y)
        )
    return {
        "model": name if name is not None else model.name,
        "num_samples": len(x),
        "artifacts": rows,
    }


def _keras_macs(model):
    from hypersparse_tf import costs

    try:
        return costs.model_cost(model)["macs"]
    except (TypeError, ValueError):  # a subclassed model: not counted
        return None


def _row(artifact, size, gzip_size, nonzero, arena):
    return {
        "artifact": artifact,
        "bytes": int(size),
        "gzip_bytes": int(gzip_size),
        "nonzero_parameters": int(nonzero),
        "arena_bytes": arena,
    }


def _quality(outputs, reference, y):
    predicted = np.argmax(outputs, axis=-1)
    return {
        "accuracy": float(np.mean(predicted == y)),
        "agreement": float(np.mean(predicted == np.argmax(reference, axis=-1))),
        "max_abs_diff": float(np.max(np.abs(outputs - reference))),
    }


def report_markdown(report):
    """Renders a `deployment_report` as a Markdown table.

    Args:
        report: Dict from `deployment_report`.

    Returns:
        A Markdown string: a title line and one table row per artifact.
    """
    lines = [
        f"Deployment of `{report['model']}` ({report['num_samples']} evaluation "
        "samples; agreement = argmax equal to the Keras model's)",
        "",
        "| artifact | bytes | gzip bytes | non-zero params | MACs "
        "| TFLM arena bytes | accuracy | agreement | max abs diff |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in report["artifacts"]:
        arena = "" if row["arena_bytes"] is None else f"{row['arena_bytes']:,}"
        macs = "" if row.get("macs") is None else f"{row['macs']:,}"
        lines.append(
            f"| {row['artifact']} | {row['bytes']:,} | {row['gzip_bytes']:,} | "
            f"{row['nonzero_parameters']:,} | {macs} | {arena} | "
            f"{row['accuracy']:.2%} | {row['agreement']:.2%} | "
            f"{row['max_abs_diff']:.2g} |"
        )
    return "\n".join(lines) + "\n"
