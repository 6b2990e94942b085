r"""HyperSparse ART, then tfmot's pruning-preserving QAT, to a full-int8 TFLite.

1. Trains a small CNN (Keras 3) on scikit-learn digits with HyperSparse + ART.
2. Builds its tf_keras twin (same layers, same names), copies the weights layer
   by layer and hands the ART mask to tensorflow-model-optimization with
   `hypersparse_tf.to_tfmot`; fine-tunes under tfmot's `UpdatePruningStep`.
3. `strip_pruning`, then tfmot's pruning-preserving quantization-aware training
   (`Default8BitPrunePreserveQuantizeScheme`).
4. Converts to a full-int8 TFLite model (int8 inputs and outputs), reads the
   int8 weights back from the flatbuffer and checks that their zeros are
   exactly the mask's.

Run from the repository root (about a minute on 2 CPU cores):

    python examples/tfmot_pqat.py --prune_rate=0.9 --output_dir=/tmp/tfmot_pqat

Writes `model_int8.tflite` and `results.json` to `--output_dir`.
"""

import json
import os
import time

from absl import app
from absl import flags

FLAGS = flags.FLAGS
flags.DEFINE_float("prune_rate", 0.9, "Fraction of the kernel weights to remove.")
flags.DEFINE_integer("warmup_epochs", 5, "Dense epochs before ART.")
flags.DEFINE_float("lambda_init", 3e-4, "Coefficient of the first ART epoch.")
flags.DEFINE_float("eta", 1.3, "Growth of the coefficient per ART epoch.")
flags.DEFINE_integer("finetune_epochs", 5, "ART's fine-tuning epochs (Keras 3).")
flags.DEFINE_integer("max_epochs", 200, "Upper bound on ART's epochs.")
flags.DEFINE_integer("tfmot_epochs", 2, "Fine-tuning epochs under tfmot pruning.")
flags.DEFINE_integer("qat_epochs", 3, "Pruning-preserving QAT epochs.")
flags.DEFINE_integer("seed", 0, "Random seed.")
flags.DEFINE_string("output_dir", "/tmp/tfmot_pqat", "Where results are written.")

# The TFLite ops whose input 1 is the weight tensor of a Conv2D or Dense layer.
_WEIGHT_OPS = ("CONV_2D", "FULLY_CONNECTED")


def digits():
    import numpy as np
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    data = load_digits()
    x = (data.images / 16.0).astype("float32")[..., np.newaxis]
    return train_test_split(
        x, data.target, test_size=0.2, random_state=0, stratify=data.target
    )


def build(layers_module, input_layer):
    """The CNN, with Keras 3 or tf_keras layers (the twin has the same names)."""
    return [
        input_layer((8, 8, 1)),
        layers_module.Conv2D(16, 3, activation="relu", name="conv"),
        layers_module.Flatten(name="flatten"),
        layers_module.Dense(32, activation="relu", name="hidden"),
        layers_module.Dense(10, name="logits"),
    ]


def keras3_model(seed):
    import keras

    keras.utils.set_random_seed(seed)
    model = keras.Sequential(build(keras.layers, keras.Input), name="cnn")
    model.compile(
        optimizer=keras.optimizers.SGD(0.1, momentum=0.9),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    return model


def tf_keras_twin(model):
    """The tf_keras twin of the Keras 3 `model`, weights copied by layer name."""
    import tf_keras

    twin = tf_keras.Sequential(build(tf_keras.layers, tf_keras.Input), name="cnn")
    for layer in model.layers:
        if layer.weights:
            twin.get_layer(layer.name).set_weights(layer.get_weights())
    return twin


def compile_tf_keras(model, learning_rate):
    import tf_keras

    model.compile(
        optimizer=tf_keras.optimizers.SGD(learning_rate, momentum=0.9),
        loss=tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )


def int8_weights(tflite_bytes):
    """The int8 weight tensors of CONV_2D and FULLY_CONNECTED ops, read from
    the flatbuffer with the TFLite schema, in operator order.

    Returns:
        List of `(op name, int8 array, scales)`; `scales` has one entry per
        output channel (axis 0), or a single one for a per-tensor scale.
    """
    import numpy as np
    from tensorflow.lite.python import schema_py_generated as schema

    model = schema.Model.GetRootAs(tflite_bytes, 0)
    names = {v: k for k, v in vars(schema.BuiltinOperator).items() if k[0] != "_"}
    subgraph = model.Subgraphs(0)
    found = []
    for index in range(subgraph.OperatorsLength()):
        operator = subgraph.Operators(index)
        code = model.OperatorCodes(operator.OpcodeIndex())
        name = names[max(code.BuiltinCode(), code.DeprecatedBuiltinCode())]
        if name not in _WEIGHT_OPS:
            continue
        tensor = subgraph.Tensors(operator.Inputs(1))
        if tensor.Type() != schema.TensorType.INT8:
            raise ValueError(f"the weights of a {name} op are not int8")
        data = model.Buffers(tensor.Buffer()).DataAsNumpy()
        values = np.asarray(data).view(np.int8).reshape(tuple(tensor.ShapeAsNumpy()))
        scales = tensor.Quantization().ScaleAsNumpy().astype(np.float64)
        found.append((name, values, scales))
    return found


def to_tflite_layout(op, kernel):
    """A Keras kernel (or its mask) in the layout of the TFLite weight tensor."""
    import numpy as np

    if op == "FULLY_CONNECTED":  # Keras (in, out) -> TFLite (out, in)
        return np.transpose(kernel)
    return np.transpose(kernel, (3, 0, 1, 2))  # Keras HWIO -> TFLite OHWI


def from_tflite_layout(op, array):
    """The inverse of `to_tflite_layout`."""
    import numpy as np

    if op == "FULLY_CONNECTED":
        return np.transpose(array)
    return np.transpose(array, (1, 2, 3, 0))  # TFLite OHWI -> Keras HWIO


def qat_kernels(qat, masks):
    """`{key: kernel variable}` of the QAT model's masked layers."""
    kernels = {}
    for layer in qat.layers:
        for weight in layer.weights:
            key = f"{getattr(layer, 'layer', layer).name}/kernel"
            if weight.name.endswith("/kernel:0") and key in masks:
                kernels[key] = weight
    return kernels


def lift_kept_weights(tflite_bytes, masks, variables):
    """Moves kept weights that int8 stores as 0 to one quantization step.

    A kept weight smaller than half an int8 step rounds to 0, so the int8 model
    would be sparser than the mask. Such a weight is set to +-1 step (the
    scale the converter chose, read from the flatbuffer): a change of less
    than one step, the size of int8 rounding itself. Convert again afterwards.

    Returns:
        The number of weights moved.
    """
    import numpy as np

    moved = 0
    for key, (op, values, scales) in zip(
        masks, int8_weights(tflite_bytes), strict=True
    ):
        kept = to_tflite_layout(op, masks[key])
        kernel = to_tflite_layout(op, variables[key].numpy())
        step = np.broadcast_to(
            scales.reshape((-1,) + (1,) * (values.ndim - 1)), values.shape
        )
        lift = kept & (values == 0)
        if not lift.any():
            continue
        sign = np.where(kernel >= 0, 1.0, -1.0)
        kernel = np.where(lift, sign * step, kernel).astype(kernel.dtype)
        variables[key].assign(from_tflite_layout(op, kernel))
        moved += int(lift.sum())
    return moved


def compare_with_mask(tflite_bytes, masks, kernels):
    """Per weight: the int8 zeros in the flatbuffer against the mask.

    Args:
        tflite_bytes: The int8 TFLite model.
        masks: Dict `{key: bool array}`, keys in the order of the ops.
        kernels: Dict `{key: float array}`, the kernels that were quantized.

    Returns:
        List of dicts: `int8_zeros`, `mask_zeros`, `masked_nonzero` (masked
        weights that are not 0 in int8: pruning lost), `rounded_to_zero`
        (kept weights that int8 stores as 0) and `rounding_explains` (whether
        each of those is below half a quantization step, `|w| < scale / 2`).
    """
    import numpy as np

    rows = []
    weights = int8_weights(tflite_bytes)
    # A Sequential model: its kernels (mask keys) come in the order of the ops.
    for key, (op, values, scales) in zip(masks, weights, strict=True):
        kept = to_tflite_layout(op, masks[key])
        kernel = to_tflite_layout(op, kernels[key])
        step = scales.reshape((-1,) + (1,) * (values.ndim - 1))
        rounded = kept & (values == 0)
        rows.append(
            {
                "key": key,
                "op": op,
                "shape": list(values.shape),
                "int8_zeros": int(np.sum(values == 0)),
                "mask_zeros": int(np.sum(~kept)),
                "masked_nonzero": int(np.sum(~kept & (values != 0))),
                "rounded_to_zero": int(np.sum(rounded)),
                "rounding_explains": bool(
                    np.all(
                        np.abs(kernel)[rounded]
                        <= (0.5 + 1e-6) * np.broadcast_to(step, kernel.shape)[rounded]
                    )
                ),
            }
        )
    return rows


def run(
    prune_rate=0.9,
    warmup_epochs=5,
    lambda_init=3e-4,
    eta=1.3,
    finetune_epochs=5,
    max_epochs=200,
    tfmot_epochs=2,
    qat_epochs=3,
    seed=0,
    output_dir=None,
):
    """The whole pipeline; returns a dict of its numbers (see `main`)."""
    import numpy as np
    import tensorflow as tf
    from ai_edge_litert.interpreter import Interpreter

    import hypersparse_tf

    x_train, x_test, y_train, y_test = digits()
    start = time.perf_counter()

    # 1. HyperSparse + ART on the Keras 3 model.
    model = keras3_model(seed)
    regularizer = hypersparse_tf.HyperSparse(prune_rate=prune_rate)
    hypersparse_tf.attach(model, regularizer)
    art = hypersparse_tf.ART(
        regularizer,
        eval_data=(x_train, y_train),
        warmup_epochs=warmup_epochs,
        lambda_init=lambda_init,
        eta=eta,
        finetune_epochs=finetune_epochs,
        verbose=0,
    )
    model.fit(
        x_train, y_train, batch_size=64, epochs=max_epochs, callbacks=[art], verbose=0
    )
    keras3_accuracy = model.evaluate(x_test, y_test, verbose=0)[1]
    masks = art.masks

    # 2. The tf_keras twin, handed to tfmot with the mask fixed.
    import tensorflow_model_optimization as tfmot

    pruned = hypersparse_tf.to_tfmot(tf_keras_twin(model), masks)
    compile_tf_keras(pruned, 0.01)
    pruned.fit(
        x_train,
        y_train,
        batch_size=64,
        epochs=tfmot_epochs,
        callbacks=[tfmot.sparsity.keras.UpdatePruningStep()],
        verbose=0,
    )
    stripped = tfmot.sparsity.keras.strip_pruning(pruned)

    # 3. Pruning-preserving quantization-aware training.
    annotated = tfmot.quantization.keras.quantize_annotate_model(stripped)
    qat = tfmot.quantization.keras.quantize_apply(
        annotated, tfmot.experimental.combine.Default8BitPrunePreserveQuantizeScheme()
    )
    compile_tf_keras(qat, 0.01)
    qat.fit(x_train, y_train, batch_size=64, epochs=qat_epochs, verbose=0)
    qat_accuracy = qat.evaluate(x_test, y_test, verbose=0)[1]

    # 4. Full-int8 TFLite.
    def convert():
        converter = tf.lite.TFLiteConverter.from_keras_model(qat)
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.int8
        converter.inference_output_type = tf.int8
        # QAT gives the activation ranges; the converter still asks for samples.
        converter.representative_dataset = lambda: (
            [x[np.newaxis]] for x in x_train[:100]
        )
        return converter.convert()

    tflite_bytes = convert()
    variables = qat_kernels(qat, masks)
    first_rows = compare_with_mask(
        tflite_bytes, masks, {k: v.numpy() * masks[k] for k, v in variables.items()}
    )
    rounded_first = sum(r["rounded_to_zero"] for r in first_rows)
    explained_first = all(r["rounding_explains"] for r in first_rows)
    # 5. Keep the mask's pattern exactly: no kept weight may round to 0.
    lifted = lift_kept_weights(tflite_bytes, masks, variables)
    if lifted:
        tflite_bytes = convert()

    interpreter = Interpreter(model_content=tflite_bytes)
    interpreter.allocate_tensors()
    (inputs,) = interpreter.get_input_details()
    (outputs,) = interpreter.get_output_details()
    scale, zero_point = inputs["quantization"]
    correct = 0
    for x, y in zip(x_test, y_test, strict=True):
        q = np.clip(np.round(x / scale + zero_point), -128, 127).astype(np.int8)
        interpreter.set_tensor(inputs["index"], q[np.newaxis])
        interpreter.invoke()
        correct += int(np.argmax(interpreter.get_tensor(outputs["index"])) == y)
    int8_accuracy = correct / len(y_test)

    # The kernels quantized: `kernel * pruning mask`.
    kernels = {k: v.numpy() * masks[k] for k, v in variables.items()}
    rows = compare_with_mask(tflite_bytes, masks, kernels)
    size = sum(int(np.size(m)) for m in masks.values())
    results = {
        "prune_rate": prune_rate,
        "art_epochs": art.art_epochs_done,
        "epochs": len(art.history),
        "keras3_test_accuracy": float(keras3_accuracy),
        "qat_test_accuracy": float(qat_accuracy),
        "int8_test_accuracy": float(int8_accuracy),
        "mask_sparsity": sum(int(np.sum(~m)) for m in masks.values()) / size,
        "int8_sparsity": sum(r["int8_zeros"] for r in rows) / size,
        "masked_weights_all_zero_in_int8": all(r["masked_nonzero"] == 0 for r in rows),
        "kept_weights_rounded_to_zero": sum(r["rounded_to_zero"] for r in rows),
        "rounding_explains_extra_zeros": all(r["rounding_explains"] for r in rows),
        "kept_weights_rounded_to_zero_before_lift": rounded_first,
        "rounding_explained_before_lift": explained_first,
        "kept_weights_lifted": lifted,
        "weights": rows,
        "tflite_bytes": len(tflite_bytes),
        "wall_s": time.perf_counter() - start,
    }
    if output_dir is not None:
        os.makedirs(output_dir, exist_ok=True)
        with open(os.path.join(output_dir, "model_int8.tflite"), "wb") as f:
            f.write(tflite_bytes)
        with open(os.path.join(output_dir, "results.json"), "w") as f:
            json.dump(results, f, indent=2)
    return results


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    r = run(
        prune_rate=FLAGS.prune_rate,
        warmup_epochs=FLAGS.warmup_epochs,
        lambda_init=FLAGS.lambda_init,
        eta=FLAGS.eta,
        finetune_epochs=FLAGS.finetune_epochs,
        max_epochs=FLAGS.max_epochs,
        tfmot_epochs=FLAGS.tfmot_epochs,
        qat_epochs=FLAGS.qat_epochs,
        seed=FLAGS.seed,
        output_dir=FLAGS.output_dir,
    )
    print()
    print(
        f"{'weight':<14} {'TFLite op':<16} {'int8 shape':<14} {'int8 zeros':>10} "
        f"{'mask zeros':>10} {'masked != 0':>11} {'kept -> 0':>9}"
    )
    for row in r["weights"]:
        print(
            f"{row['key']:<14} {row['op']:<16} {str(tuple(row['shape'])):<14} "
            f"{row['int8_zeros']:>10,d} {row['mask_zeros']:>10,d} "
            f"{row['masked_nonzero']:>11,d} {row['rounded_to_zero']:>9,d}"
        )
    print()
    print(
        f"ART: {r['art_epochs']} ART epochs, {r['epochs']} epochs in all; "
        f"test accuracy {r['keras3_test_accuracy']:.4f} (Keras 3, float)"
    )
    print(
        f"test accuracy after PQAT (tf_keras, fake quant): {r['qat_test_accuracy']:.4f}"
    )
    print(f"test accuracy, int8 TFLite model (LiteRT): {r['int8_test_accuracy']:.4f}")
    print(f"sparsity of the mask:                            {r['mask_sparsity']:.4%}")
    print(f"sparsity of the int8 weights in the flatbuffer:  {r['int8_sparsity']:.4%}")
    print(
        "every masked weight is 0 in the int8 model:      "
        f"{r['masked_weights_all_zero_in_int8']}"
    )
    print(
        "kept weights int8 rounded to 0 at first (|w| < scale/2): "
        f"{r['kept_weights_rounded_to_zero_before_lift']} "
        f"(all below half a step: {r['rounding_explained_before_lift']}); "
        f"lifted to one step and converted again: {r['kept_weights_lifted']}"
    )
    print(
        "int8 zeros equal the mask's exactly:              "
        f"{r['int8_sparsity'] == r['mask_sparsity']}"
    )
    print(f"TFLite size: {r['tflite_bytes']:,d} bytes; wall time {r['wall_s']:.1f} s")
    print(f"written to {FLAGS.output_dir}")


if __name__ == "__main__":
    app.run(main)
