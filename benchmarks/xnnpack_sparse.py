r"""Does LiteRT's XNNPACK take its sparse path for a sparse MobileNet here?

XNNPACK runs the 1x1 convolutions of a MobileNet-style float subgraph (3x3
stride-2 stem on 3 channels, 1x1 and depthwise convolutions, a global mean at
the end) as sparse matrix products when at least 2/3 of their weights are zero
and the model marks sparse weights (TFLite's sparse encoding, which LiteRT
unpacks with DENSIFY). Published: 1.3-2.4x on ARM phones. This builds
`models.mobilenet_style` at `--size`x`--size`x3 with `--width`, prunes only its
1x1 kernels by global magnitude at each of `--rates`, converts dense and
sparse float models, and times them interleaved in LiteRT (1 thread, XNNPACK
on; median of `--runs`). It also records whether the CPU has AVX: XNNPACK's
source (`xnn_is_chw_compatible_config`) disables its sparse (CHW) kernels on
x86 processors with AVX ("dense inference is expected to be faster than
sparse"), so on such a host the ratio stays at 1.

    PYTHONPATH=. python3 benchmarks/xnnpack_sparse.py

Results: `benchmarks/results/xnnpack_sparse.md`.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import datetime  # noqa: E402
import pathlib  # noqa: E402
import platform  # noqa: E402
import shlex  # noqa: E402
import sys  # noqa: E402

import keras  # noqa: E402
from absl import app  # noqa: E402
from absl import flags  # noqa: E402

import hypersparse_tf  # noqa: E402
from hypersparse_tf import export  # noqa: E402
from hypersparse_tf import models  # noqa: E402

_SIZE = flags.DEFINE_integer("size", 224, "Input height and width.")
_WIDTH = flags.DEFINE_integer("width", 32, "`width` of mobilenet_style.")
_RATES = flags.DEFINE_list("rates", ["0.67", "0.9", "0.98"], "Zeros in 1x1 kernels.")
_RUNS = flags.DEFINE_integer("runs", 50, "Timed rounds.")
_OUTPUT = flags.DEFINE_string(
    "output", "benchmarks/results/xnnpack_sparse.md", "The Markdown file."
)


def _one_by_one(layer, weight):
    return isinstance(layer, keras.layers.Conv2D) and layer.kernel_size == (1, 1)


def _cpu_flags():
    try:
        text = pathlib.Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    line = next((x for x in text.splitlines() if x.startswith("flags")), "")
    return set(line.split(":", 1)[-1].split())


def main(argv):
    del argv
    keras.utils.set_random_seed(0)
    model = models.mobilenet_style(
        input_shape=(_SIZE.value, _SIZE.value, 3), width=_WIDTH.value
    )
    artifacts = {"dense": export.to_tflite(model, "mobile")}
    dense_weights = model.get_weights()
    rows = []
    for rate in map(float, _RATES.value):
        model.set_weights(dense_weights)
        masks = hypersparse_tf.global_magnitude_masks(model, rate, _one_by_one)
        hypersparse_tf.apply_masks(model, masks, _one_by_one)
        sparse = export.to_tflite(model, "mobile", sparse=True)
        info = export.inspect_tflite(sparse)
        artifacts[f"sparse {rate:g}"] = sparse
        rows.append((rate, len(info["sparse_tensors"]), "DENSIFY" in info["operators"]))
    seconds = export.litert_latency(artifacts, num_runs=_RUNS.value)
    cpu = _cpu_flags()
    lines = [
        "# XNNPACK's sparse path for a MobileNet-style float model",
        "",
        f"Run on {datetime.date.today().isoformat()}, {platform.machine()}, "
        f"AVX: {'yes' if 'avx' in cpu else 'no'}, AVX2: "
        f"{'yes' if 'avx2' in cpu else 'no'}. Command:",
        "",
        f"    PYTHONPATH=. python3 {shlex.join(sys.argv)}",
        "",
        f"`mobilenet_style(input_shape=({_SIZE.value}, {_SIZE.value}, 3), "
        f"width={_WIDTH.value})`, "
        f"{hypersparse_tf.model_cost(model)['macs']:,} MACs; only the 1x1 "
        "kernels pruned. LiteRT float32, 1 thread, XNNPACK, median of "
        f"{_RUNS.value} interleaved runs.",
        "",
        "| 1x1 zeros | sparse tensors | DENSIFY | latency (ms) | sparse / dense |",
        "|---:|---:|---|---:|---:|",
        f"| 0% (dense) | 0 | no | {1e3 * seconds['dense']:.3f} | 1.00x |",
    ]
    for rate, count, densify in rows:
        value = seconds[f"sparse {rate:g}"]
        lines.append(
            f"| {rate:.0%} | {count} | {'yes' if densify else 'no'} | "
            f"{1e3 * value:.3f} | {value / seconds['dense']:.2f}x |"
        )
    lines += [
        "",
        "XNNPACK's hardware configuration (`xnn_is_chw_compatible_config`) "
        "turns its sparse CHW kernels off on x86 CPUs with AVX: its sparse "
        "microkernels there target SSE only, and dense inference is expected to "
        "be faster. A ratio near 1.00x on an AVX host is that rule, not the "
        "model: the sparse path is for ARM phones (and WebAssembly), where it "
        "needs a phone to measure.",
    ]
    pathlib.Path(_OUTPUT.value).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    app.run(main)
