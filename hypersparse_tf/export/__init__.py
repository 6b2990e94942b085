"""Export to TFLite for phones (LiteRT) and microcontrollers (TFLite Micro).

Every exported model is checked by running it: `target="mobile"` models in the
LiteRT interpreter of `ai_edge_litert`, `target="micro"` models in the TFLite
Micro interpreter of the `tflite_micro` package (install both with
`pip install "hypersparse_tf[export]"`).

What each runtime does with sparsity (measured with TF 2.21, ai-edge-litert 2.3
and tflite-micro):

- LiteRT: `Optimize.EXPERIMENTAL_SPARSITY` stores weights with >= 30% zeros in a
  sparse format: a 90%-sparse model is several times smaller. Most sparse
  weights are expanded again at load time by a `DENSIFY` op.
- TFLite Micro has neither `DENSIFY` nor sparse tensors. A micro model is a dense
  full-integer (int8) model; sparsity makes it smaller only where `shrink`
  removed whole units and channels.

One module per concept: `conversion` (`to_tflite`), `flatbuffer`
(`inspect_tflite`), `litert` (`run_tflite`, `litert_latency`), `micro`
(`run_micro`, `micro_arena_size`, `micro_latency`, each in a child process run by
`micro_worker`), `c_array` (`write_c_array`) and `report`
(`deployment_report`, `report_markdown`). Everything public is importable from
`hypersparse_tf.export` itself.
"""

from hypersparse_tf.export.c_array import write_c_array
from hypersparse_tf.export.conversion import MICRO_QUANTIZATIONS
from hypersparse_tf.export.conversion import MOBILE_QUANTIZATIONS
from hypersparse_tf.export.conversion import TARGETS
from hypersparse_tf.export.conversion import to_tflite
from hypersparse_tf.export.flatbuffer import inspect_tflite
from hypersparse_tf.export.litert import litert_latency
from hypersparse_tf.export.litert import run_tflite
from hypersparse_tf.export.micro import micro_arena_size
from hypersparse_tf.export.micro import micro_latency
from hypersparse_tf.export.micro import run_micro
from hypersparse_tf.export.report import ARTIFACTS
from hypersparse_tf.export.report import convert_artifacts
from hypersparse_tf.export.report import deployment_report
from hypersparse_tf.export.report import report_markdown

__all__ = [
    "ARTIFACTS",
    "MICRO_QUANTIZATIONS",
    "MOBILE_QUANTIZATIONS",
    "TARGETS",
    "convert_artifacts",
    "deployment_report",
    "inspect_tflite",
    "litert_latency",
    "micro_arena_size",
    "micro_latency",
    "report_markdown",
    "run_micro",
    "run_tflite",
    "to_tflite",
    "write_c_array",
]
