"""Image classification data sets as uint8 arrays.

One loader, `load(name)`, for:

- `digits`: scikit-learn's 1,797 8x8 digits, always installed (the default);
- `mnist`: `mnist.npz` (keys `x_train y_train x_test y_test`) from `path`, the
  project's `../shared/data/`, else tensorflow-datasets;
- `fashion_mnist`: the idx files of Debian's `dataset-fashion-mnist` in
  `/usr/share/datasets/fashion-mnist/` (or `path`), else tensorflow-datasets;
- `cifar10`: the JPEG archive `cifar10-jpeg.tar.gz` (or a folder) from `path`
  or `../shared/data/`, else tensorflow-datasets;
- any image folder `train/<class>/*`, `test/<class>/*` given as `path` with
  `name="folder"` (TinyImageNet's layout, a user's own images);
- any other tensorflow-datasets name (`cifar100`, ...), from its local cache.

Images are kept as uint8 arrays `(N, H, W, C)`; `hypersparse_tf.pipelines`
turns them into normalized float32 `tf.data` pipelines with the reference
augmentation (also importable from here as before).
"""

import dataclasses
import gzip
import os
import pathlib
import tarfile

import numpy as np
import tensorflow as tf

from hypersparse_tf import _keras_compat
from hypersparse_tf import validation

NAMES = ("digits", "mnist", "fashion_mnist", "cifar10", "folder")
FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif")


@dataclasses.dataclass
class ImageData:
    """A labelled image data set split into train and test arrays.

    Attributes:
        name: String. The data set's name.
        x_train: uint8 array `(N, H, W, C)`.
        y_train: int32 array `(N,)` of class indices.
        x_test: uint8 array `(M, H, W, C)`.
        y_test: int32 array `(M,)`.
        class_names: List of strings, one per class.
        source: String. Where the data came from.
    """

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    class_names: list
    source: str

    @property
    def num_classes(self):
        return len(self.class_names)

    @property
    def input_shape(self):
        return tuple(self.x_train.shape[1:])


def shared_data_dirs():
    """Where the project's shared data may be: `../shared/data` beside the
    checkout (from this file and from the working directory)."""
    here = pathlib.Path(__file__).resolve().parent.parent
    candidates = [here.parent, pathlib.Path.cwd().parent]
    unique = []
    for candidate in candidates:
        if candidate / "shared" / "data" not in unique:
            unique.append(candidate / "shared" / "data")
    return unique


def _find(filename, path):
    """Returns the first existing candidate for `filename`, and all tried."""
    if path is not None:
        path = pathlib.Path(path)
        candidates = [path / filename] if path.is_dir() else [path]
    else:
        candidates = [folder / filename for folder in shared_data_dirs()]
    for candidate in candidates:
        if candidate.is_file():
            return candidate, [str(c) for c in candidates]
    return None, [str(c) for c in candidates]


def _from_tfds(name, tried, how_to_get):
    try:
        import tensorflow_datasets as tfds
    except ImportError:
        tfds = None
    if tfds is not None:
        try:
            builder = tfds.builder(name)
        except Exception as error:  # unknown name
            raise ValueError(
                f"Invalid value for argument `name`. Expected one of {NAMES} or a "
                f"tensorflow-datasets name. Received: name={name!r} ({error})"
            ) from None
        try:
            splits = tfds.load(
                name, split=["train", "test"], as_supervised=True, download=False
            )
            arrays = []
            for split in splits:
                pairs = list(tfds.as_numpy(split))
                arrays.append(np.stack([x for x, _ in pairs]))
                arrays.append(np.asarray([y for _, y in pairs], np.int32))
        except Exception as error:
            tried = [*tried, f"tensorflow-datasets {name!r}: {error}"]
        else:
            features = _keras_compat.tfds_features(builder)
            return ImageData(
                name,
                arrays[0].astype(np.uint8),
                arrays[1],
                arrays[2].astype(np.uint8),
                arrays[3],
                list(features["label"].names),
                f"tensorflow-datasets {name!r}",
            )
    else:
        tried = [*tried, "tensorflow-datasets (not installed)"]
    raise FileNotFoundError(
        f"Data set {name!r} not found. Looked in: {'; '.join(tried)}. {how_to_get}"
    )


def _digits():
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    data = load_digits()
    images = np.rint(data.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
    x_train, x_test, y_train, y_test = train_test_split(
        images,
        data.target.astype(np.int32),
        test_size=0.2,
        random_state=0,
        stratify=data.target,
    )
    return ImageData(
        "digits",
        x_train,
        y_train,
        x_test,
        y_test,
        [str(i) for i in range(10)],
        "scikit-learn load_digits (80/20 stratified split, random_state=0)",
    )


def _mnist(path):
    found, tried = _find("mnist.npz", path)
    if found is None:
        return _from_tfds(
            "mnist",
            tried,
            "Pass path= to an mnist.npz with keys x_train y_train x_test y_test, "
            "or prepare the tensorflow-datasets 'mnist' on a machine with "
            "internet access.",
        )
    with np.load(found) as data:
        arrays = [data[k] for k in ("x_train", "y_train", "x_test", "y_test")]
    x_train, y_train, x_test, y_test = arrays
    return ImageData(
        "mnist",
        x_train.astype(np.uint8)[..., None],
        y_train.astype(np.int32),
        x_test.astype(np.uint8)[..., None],
        y_test.astype(np.int32),
        [str(i) for i in range(10)],
        str(found),
    )


def _read_idx(path):
    with gzip.open(path, "rb") as f:
        data = f.read()
    dims = data[3]
    shape = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(dims)]
    return np.frombuffer(data, np.uint8, offset=4 + 4 * dims).reshape(shape)


FASHION_MNIST_CLASSES = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]


def _fashion_mnist(path):
    folder = pathlib.Path(path) if path is not None else pathlib.Path(FASHION_MNIST_DIR)
    files = {
        "x_train": "train-images-idx3-ubyte.gz",
        "y_train": "train-labels-idx1-ubyte.gz",
        "x_test": "t10k-images-idx3-ubyte.gz",
        "y_test": "t10k-labels-idx1-ubyte.gz",
    }
    if not all((folder / f).is_file() for f in files.values()):
        return _from_tfds(
            "fashion_mnist",
            [str(folder)],
            "Install Debian's package: `apt-get install dataset-fashion-mnist`, "
            "or pass path= to a folder with the four idx .gz files.",
        )
    arrays = {k: _read_idx(folder / f) for k, f in files.items()}
    return ImageData(
        "fashion_mnist",
        arrays["x_train"][..., None],
        arrays["y_train"].astype(np.int32),
        arrays["x_test"][..., None],
        arrays["y_test"].astype(np.int32),
        list(FASHION_MNIST_CLASSES),
        str(folder),
    )


def _decode(data):
    image = tf.io.decode_image(data, channels=3, expand_animations=False)
    return image.numpy()


def _split_and_class(relative):
    parts = pathlib.PurePosixPath(relative).parts
    parts = [p for p in parts if p not in (".", "")]
    for index, part in enumerate(parts[:-2]):
        if part in ("train", "test"):
            return part, parts[index + 1]
    return None, None


def _select(files, size, seed):
    """Chooses `size` items per split deterministically, balanced by class.

    Args:
        files: Dict `{class: [file keys]}`.
        size: Int or None. How many in all; None keeps everything.
    """
    classes = sorted(files)
    rng = np.random.default_rng(seed)
    chosen = {}
    for c in classes:
        names = sorted(files[c])
        chosen[c] = [names[i] for i in rng.permutation(len(names))]
    if size is None:
        return chosen
    per_class, extra = divmod(size, len(classes))
    return {
        c: chosen[c][: per_class + (1 if i < extra else 0)]
        for i, c in enumerate(classes)
    }


def _images_from_files(name, source, read, listing, train_size, test_size, seed):
    """Builds ImageData from `{split: {class: [keys]}}` and a reader."""
    class_names = sorted(set(listing.get("train", {})) | set(listing.get("test", {})))
    if not listing.get("train") or not listing.get("test"):
        raise ValueError(
            f"{source} holds no train/<class>/<image> and test/<class>/<image> files."
        )
    arrays = {}
    for split, size in (("train", train_size), ("test", test_size)):
        chosen = _select(listing[split], size, seed)
        images, labels = [], []
        for label, c in enumerate(class_names):
            for key in chosen.get(c, []):
                images.append(_decode(read(key)))
                labels.append(label)
        shapes = {image.shape for image in images}
        if len(shapes) != 1:
            raise ValueError(
                f"The {split} images of {source} have different shapes {shapes}."
            )
        arrays[split] = (np.stack(images), np.asarray(labels, np.int32))
    return ImageData(
        name, *arrays["train"], *arrays["test"], class_names, source=source
    )


def _archive(path, name, train_size, test_size, seed):
    contents = {}
    listing = {}
    with tarfile.open(path) as archive:
        for member in archive:
            if not member.isfile() or not member.name.lower().endswith(_IMAGE_SUFFIXES):
                continue
            split, label = _split_and_class(member.name)
            if split is None:
                continue
            contents[member.name] = archive.extractfile(member).read()
            listing.setdefault(split, {}).setdefault(label, []).append(member.name)
    return _images_from_files(
        name, str(path), contents.__getitem__, listing, train_size, test_size, seed
    )


def _folder(path, name, train_size, test_size, seed):
    root = pathlib.Path(path)
    listing = {}
    for split in ("train", "test"):
        split_dir = root / split
        if not split_dir.is_dir():
            continue
        for class_dir in sorted(p for p in split_dir.iterdir() if p.is_dir()):
            files = [
                str(f)
                for f in class_dir.rglob("*")
                if f.suffix.lower() in _IMAGE_SUFFIXES
            ]
            if files:
                listing.setdefault(split, {})[class_dir.name] = files
    return _images_from_files(
        name,
        str(root),
        lambda key: pathlib.Path(key).read_bytes(),
        listing,
        train_size,
        test_size,
        seed,
    )


def _cifar10(path, train_size, test_size, seed):
    if path is not None and pathlib.Path(path).is_dir():
        return _folder(path, "cifar10", train_size, test_size, seed)
    found, tried = _find("cifar10-jpeg.tar.gz", path)
    if found is None:
        return _from_tfds(
            "cifar10",
            tried,
            "Pass path= to cifar10-jpeg.tar.gz or to a folder with "
            "train/<class>/*.jpg and test/<class>/*.jpg, or prepare the "
            "tensorflow-datasets 'cifar10' on a machine with internet access.",
        )
    return _archive(found, "cifar10", train_size, test_size, seed)


def _subset(data, train_size, test_size, seed):
    """Class-balanced, deterministic subsets of already loaded arrays."""

    def take(x, y, size):
        if size is None or size >= len(y):
            return x, y
        files = {c: list(np.flatnonzero(y == c)) for c in np.unique(y)}
        chosen = _select(files, size, seed)
        index = np.sort(np.concatenate([chosen[c] for c in sorted(chosen)]))
        return x[index], y[index]

    x_train, y_train = take(data.x_train, data.y_train, train_size)
    x_test, y_test = take(data.x_test, data.y_test, test_size)
    return dataclasses.replace(
        data, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test
    )


def load(name="digits", path=None, train_size=None, test_size=None, seed=0):
    """Loads an image classification data set as uint8 arrays.

    Args:
        name: String. `"digits"`, `"mnist"`, `"fashion_mnist"`, `"cifar10"`,
            `"folder"` (needs `path`) or a tensorflow-datasets name. Defaults
            to `"digits"`.
        path: String or None. A file or folder to read instead of the default
            places. Defaults to `None`.
        train_size: Int or None. Keep this many training images, balanced over
            the classes and chosen with `seed`. Defaults to `None` (all).
        test_size: Int or None. The same for the test images. Defaults to
            `None`.
        seed: Int. Seed of the subset choice. Defaults to `0`.

    Returns:
        An `ImageData`.

    Raises:
        FileNotFoundError: naming where the data set was looked for and how
            to get it.
    """
    if not isinstance(name, str) or not name:
        raise ValueError(
            f"Invalid value for argument `name`. Expected one of {NAMES} or a "
            f"tensorflow-datasets name. Received: name={name!r}"
        )
    validation.check_int(train_size, "train_size", 1, allow_none=True)
    validation.check_int(test_size, "test_size", 1, allow_none=True)
    if path is not None and not os.path.exists(path):
        raise FileNotFoundError(
            f"Invalid value for argument `path`: {path!r} does not exist."
        )
    if name == "digits":
        data = _digits()
    elif name == "mnist":
        data = _mnist(path)
    elif name == "fashion_mnist":
        data = _fashion_mnist(path)
    elif name == "cifar10":
        data = _cifar10(path, train_size, test_size, seed)
    elif name == "folder":
        if path is None:
            raise ValueError(
                "Invalid value for argument `path`. Expected a folder with "
                "train/<class>/* and test/<class>/* images for name='folder'. "
                "Received: path=None"
            )
        if pathlib.Path(path).is_file():
            data = _archive(path, pathlib.Path(path).stem, train_size, test_size, seed)
        else:
            data = _folder(path, pathlib.Path(path).name, train_size, test_size, seed)
    else:
        data = _from_tfds(
            name,
            [],
            "Prepare it with tensorflow-datasets on a machine with internet "
            "access (tfds.load(name)), then copy its data_dir here.",
        )
    return _subset(data, train_size, test_size, seed)


# The pipelines lived here before they got a module of their own.
from hypersparse_tf.pipelines import augment  # noqa: E402
from hypersparse_tf.pipelines import channel_statistics  # noqa: E402
from hypersparse_tf.pipelines import pipelines  # noqa: E402

__all__ = [
    "FASHION_MNIST_DIR",
    "NAMES",
    "ImageData",
    "augment",
    "channel_statistics",
    "load",
    "pipelines",
    "shared_data_dirs",
]
