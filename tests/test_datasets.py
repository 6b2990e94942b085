import pathlib

import numpy as np
import pytest
import tensorflow as tf

from hypersparse_tf import datasets

SHARED = datasets.shared_data_dirs()[0]
MNIST = SHARED / "mnist.npz"
CIFAR = SHARED / "cifar10-jpeg.tar.gz"
FASHION = pathlib.Path(datasets.FASHION_MNIST_DIR)
needs_mnist = pytest.mark.skipif(
    not MNIST.is_file(), reason=f"{MNIST} is absent (shared data not laid out)"
)
needs_cifar = pytest.mark.skipif(
    not CIFAR.is_file(), reason=f"{CIFAR} is absent (shared data not laid out)"
)
needs_fashion = pytest.mark.skipif(
    not (FASHION / "train-images-idx3-ubyte.gz").is_file(),
    reason=f"{FASHION} is absent: apt-get install dataset-fashion-mnist",
)


def _assert_balanced(y, num_classes, per_class=None, spread=0):
    counts = np.bincount(y, minlength=num_classes)
    assert len(counts) == num_classes
    if per_class is not None:
        assert np.all(counts == per_class), counts
    else:
        assert counts.max() - counts.min() <= spread, counts


def test_load_digits_shapes_and_balance():
    data = datasets.load("digits")
    assert data.x_train.shape == (1437, 8, 8, 1) and data.x_test.shape == (360, 8, 8, 1)
    assert data.x_train.dtype == np.uint8 and data.x_train.max() == 255
    assert data.num_classes == 10 and data.input_shape == (8, 8, 1)
    _assert_balanced(data.y_train, 10, spread=8)
    _assert_balanced(data.y_test, 10, spread=2)
    again = datasets.load("digits")
    np.testing.assert_array_equal(again.x_train, data.x_train)


@needs_mnist
def test_load_mnist_from_shared_npz():
    data = datasets.load("mnist")
    assert data.source == str(MNIST)
    assert data.x_train.shape == (60000, 28, 28, 1)
    assert data.x_test.shape == (10000, 28, 28, 1)
    assert np.bincount(data.y_test).tolist() == [
        980,
        1135,
        1032,
        1010,
        982,
        892,
        958,
        1028,
        974,
        1009,
    ]


@needs_mnist
def test_load_subset_is_balanced_and_deterministic():
    a = datasets.load("mnist", train_size=105, test_size=20, seed=3)
    b = datasets.load("mnist", train_size=105, test_size=20, seed=3)
    c = datasets.load("mnist", train_size=105, test_size=20, seed=4)
    assert a.x_train.shape == (105, 28, 28, 1)
    _assert_balanced(a.y_train, 10, spread=1)
    _assert_balanced(a.y_test, 10, per_class=2)
    np.testing.assert_array_equal(a.x_train, b.x_train)
    assert not np.array_equal(a.x_train, c.x_train)


def test_load_mnist_from_a_given_npz(tmp_path):
    rng = np.random.default_rng(0)
    arrays = {
        "x_train": rng.integers(0, 256, (30, 28, 28), dtype=np.uint8),
        "y_train": np.arange(30) % 10,
        "x_test": rng.integers(0, 256, (10, 28, 28), dtype=np.uint8),
        "y_test": np.arange(10),
    }
    np.savez(tmp_path / "mnist.npz", **arrays)
    data = datasets.load("mnist", path=str(tmp_path))
    np.testing.assert_array_equal(data.x_train[..., 0], arrays["x_train"])
    np.testing.assert_array_equal(data.y_test, arrays["y_test"])


@needs_fashion
def test_load_fashion_mnist_from_debian_package():
    data = datasets.load("fashion_mnist")
    assert data.x_train.shape == (60000, 28, 28, 1)
    assert data.x_test.shape == (10000, 28, 28, 1)
    _assert_balanced(data.y_train, 10, per_class=6000)
    _assert_balanced(data.y_test, 10, per_class=1000)
    assert data.class_names[9] == "Ankle boot"


@needs_cifar
def test_load_cifar10_archive_subset():
    data = datasets.load("cifar10", train_size=60, test_size=20, seed=1)
    assert data.x_train.shape == (60, 32, 32, 3) and data.x_test.shape == (
        20,
        32,
        32,
        3,
    )
    assert data.class_names[:3] == ["airplane", "automobile", "bird"]
    _assert_balanced(data.y_train, 10, per_class=6)
    _assert_balanced(data.y_test, 10, per_class=2)
    assert 40 < data.x_train.mean() < 200  # real images, not blank


def _write_folder(root, classes, per_class, shape=(6, 5, 3)):
    rng = np.random.default_rng(0)
    images = {}
    for split in ("train", "test"):
        for c in classes:
            folder = root / split / c
            folder.mkdir(parents=True)
            for i in range(per_class):
                image = rng.integers(0, 256, shape, dtype=np.uint8)
                (folder / f"{i}.png").write_bytes(tf.io.encode_png(image).numpy())
                images[(split, c, i)] = image
    return images


def test_load_image_folder(tmp_path):
    images = _write_folder(tmp_path, ["cat", "ant"], 3)
    data = datasets.load("folder", path=str(tmp_path))
    assert data.class_names == ["ant", "cat"]
    assert data.x_train.shape == (6, 6, 5, 3)
    for x, y in zip(data.x_train, data.y_train, strict=True):
        name = data.class_names[y]
        assert any(np.array_equal(x, images[("train", name, i)]) for i in range(3))


def test_load_tfds_name_with_mock_data():
    tfds = pytest.importorskip("tensorflow_datasets")
    with tfds.testing.mock_data(num_examples=12):
        data = datasets.load("cifar100")
    assert data.x_train.shape[1:] == (32, 32, 3)
    assert data.num_classes == 100
    assert len(data.x_train) == 12


def test_load_missing_data_says_where_it_looked(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        datasets.load("mnist", path=str(tmp_path / "nowhere.npz"))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError) as error:
        datasets.load("fashion_mnist", path=str(empty))
    assert str(empty) in str(error.value)
    assert "apt-get install dataset-fashion-mnist" in str(error.value)


def test_load_bad_arguments():
    with pytest.raises(ValueError, match="argument `name`"):
        datasets.load("no_such_dataset_anywhere")
    with pytest.raises(ValueError, match="argument `train_size`"):
        datasets.load("digits", train_size=0)
    with pytest.raises(ValueError, match="argument `path`"):
        datasets.load("folder")


def test_augment_is_a_padded_crop_maybe_flipped():
    image = tf.constant(np.arange(4 * 5 * 2).reshape(4, 5, 2), tf.int32)
    padded = np.pad(image.numpy(), [(2, 2), (2, 2), (0, 0)])
    for s in range(5):
        out = datasets.augment(image, tf.constant([s, 7]), padding=2).numpy()
        candidates = [padded[i : i + 4, j : j + 5] for i in range(5) for j in range(5)]
        candidates += [c[:, ::-1] for c in candidates]
        assert any(np.array_equal(out, c) for c in candidates)


def test_pipelines_are_deterministic_and_normalized():
    data = datasets.load("digits")
    first = datasets.pipelines(data, batch_size=32, augment_train=True, seed=5)
    second = datasets.pipelines(data, batch_size=32, augment_train=True, seed=5)
    other = datasets.pipelines(data, batch_size=32, augment_train=True, seed=6)
    batches = [list(p["train"].take(3).as_numpy_iterator()) for p in (first, second)]
    for (xa, ya), (xb, yb) in zip(*batches, strict=True):
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ya, yb)
    x_other = next(other["train"].as_numpy_iterator())[0]
    assert not np.array_equal(batches[0][0][0], x_other)
    assert first["steps_per_epoch"] == 45
    x_all = np.concatenate([x for x, _ in first["train_eval"].as_numpy_iterator()])
    assert x_all.shape == (1437, 8, 8, 1)
    np.testing.assert_allclose(x_all.mean(), 0.0, atol=1e-5)
    np.testing.assert_allclose(x_all.std(), 1.0, atol=1e-4)


def _passes(dataset, count):
    return [
        [
            np.concatenate(arrays)
            for arrays in zip(*dataset.as_numpy_iterator(), strict=True)
        ]
        for _ in range(count)
    ]


def test_augmented_eval_data_is_a_new_shuffled_augmented_pass_each_time():
    data = datasets.load("digits")
    pipes = datasets.pipelines(data, batch_size=32, augment_train=True, seed=5)
    again = datasets.pipelines(data, batch_size=32, augment_train=True, seed=5)
    (x1, y1), (x2, y2) = _passes(pipes["train_eval_augmented"], 2)
    plain_x, plain_y = _passes(pipes["train_eval"], 1)[0]
    for x, y in ((x1, y1), (x2, y2)):  # every sample once, in another order
        assert x.shape == plain_x.shape
        np.testing.assert_array_equal(np.sort(y), np.sort(plain_y))
        assert not np.array_equal(y, plain_y)
    assert not np.array_equal(y1, y2) and not np.array_equal(x1, x2)
    # Augmented: a sample's image is not its plain image (crop or flip moved
    # it) for most samples; the same seed gives the same passes.
    first_label = y1[0]
    assert not any(
        np.array_equal(x1[0], plain_x[i])
        for i in np.flatnonzero(plain_y == first_label)
    )
    (x1_again, y1_again), _ = _passes(again["train_eval_augmented"], 2)
    np.testing.assert_array_equal(x1_again, x1)
    np.testing.assert_array_equal(y1_again, y1)
    no_augment = datasets.pipelines(data, batch_size=32, augment_train=False)
    assert no_augment["train_eval_augmented"] is not None
    x_plain, _ = _passes(no_augment["train_eval_augmented"], 1)[0]
    np.testing.assert_array_equal(x_plain, plain_x)
