"""hypersparse_tf: HyperSparse regularization and ART for Keras, to TFLite."""

import pathlib
import re

import setuptools

HERE = pathlib.Path(__file__).parent
VERSION = re.search(
    r'__version__ = "([^"]+)"', (HERE / "hypersparse_tf" / "__init__.py").read_text()
).group(1)

EXTRAS = {
    # tensorflow-model-optimization works on tf_keras (Keras 2) models only.
    "tfmot": ["tensorflow-model-optimization>=0.8", "tf-keras>=2.16", "tensorboard"],
    # Running exported models: LiteRT for mobile, TFLite Micro for boards.
    "export": ["ai-edge-litert>=1.0", "tflite-micro"],
    # Keras 3's JAX backend (CPU wheel; a GPU machine brings its own).
    "jax": ["jax>=0.4.30"],
    # Data sets beyond the embedded default, and plots of runs.
    "data": [
        "scikit-learn>=1.0",
        "tensorflow-datasets>=4.9",
        "matplotlib>=3.5",
        "tensorboard",
    ],
}
# What the tests import: every extra above (their tests skip with a message
# where one is missing) and the test tools themselves.
EXTRAS["test"] = sorted(
    {req for reqs in EXTRAS.values() for req in reqs}
    | {"pytest>=7", "ruff>=0.5", "scikit-learn>=1.0", "hypothesis>=6"}
)
EXTRAS["all"] = sorted({req for reqs in EXTRAS.values() for req in reqs})

setuptools.setup(
    name="hypersparse_tf",
    version=VERSION,
    description=(
        "HyperSparse regularization and Adaptive Regularized Training (ART) for "
        "Keras, with export to TFLite for mobile and microcontrollers."
    ),
    long_description=(HERE / "README.md").read_text(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    packages=setuptools.find_packages(include=["hypersparse_tf", "hypersparse_tf.*"]),
    python_requires=">=3.10",
    install_requires=[
        "tensorflow>=2.16",
        "keras>=3",
        "numpy",
        "absl-py",
    ],
    extras_require=EXTRAS,
    classifiers=[
        "Programming Language :: Python :: 3",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
)
