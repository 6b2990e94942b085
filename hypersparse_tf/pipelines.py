"""Normalized `tf.data` pipelines over image arrays, with the reference
augmentation: random crop after 4-pixel zero padding and a horizontal flip,
stateless, so the same seed gives the same batches.
"""

import numpy as np
import tensorflow as tf


def channel_statistics(x):
    """Per-channel mean and standard deviation of uint8 images, in [0, 1]."""
    x = np.asarray(x, np.float64) / 255.0
    axes = tuple(range(x.ndim - 1))
    return x.mean(axis=axes).astype(np.float32), x.std(axis=axes).astype(np.float32)


def _normalize(mean, std):
    mean = tf.constant(mean, tf.float32)
    std = tf.constant(np.maximum(std, 1e-6), tf.float32)

    def normalize(x):
        return (tf.cast(x, tf.float32) / 255.0 - mean) / std

    return normalize


def augment(image, seed, padding=4):
    """Random crop after zero padding, then random horizontal flip.

    Stateless: the same `seed` (a shape-[2] int tensor) gives the same result.

    Args:
        image: Tensor `(H, W, C)`.
        seed: Int tensor of shape [2].
        padding: Int. Pixels of zero padding on each side. Defaults to `4`.
    """
    shape = tf.shape(image)
    padded = tf.pad(image, [[padding, padding], [padding, padding], [0, 0]])
    crop_seed, flip_seed = tf.unstack(
        tf.random.experimental.stateless_split(seed, num=2)
    )
    cropped = tf.image.stateless_random_crop(padded, shape, seed=crop_seed)
    return tf.image.stateless_random_flip_left_right(cropped, seed=flip_seed)


def pipelines(data, batch_size=64, augment_train=None, seed=0, mean=None, std=None):
    """Normalized tf.data pipelines for training, evaluation and testing.

    Args:
        data: An `ImageData`.
        batch_size: Int. Defaults to `64`.
        augment_train: Bool or None. Random crop + flip on the training
            pipeline. Defaults to `None`: on for 32x32 and larger colour
            images (CIFAR, TinyImageNet), off for digits and (Fashion-)MNIST.
        seed: Int. Seed of shuffling and augmentation: the same seed gives
            the same batches. Defaults to `0`.
        mean: Per-channel mean in [0, 1], or None to use the training set's.
        std: Per-channel std in [0, 1], or None to use the training set's.

    Returns:
        A dict with `"train"` (shuffled, augmented, repeated forever: pass
        `steps_per_epoch`), `"train_eval"` (the training set in order, no
        augmentation), `"train_eval_augmented"` (one pass over the training
        set shuffled and augmented anew on every pass, as the reference's
        training loader that ART's pruned copy is scored on; the same as
        `"train_eval"` without augmentation), `"test"`,
        `"steps_per_epoch"`, `"augmented"` (whether training is augmented),
        `"mean"` and `"std"`.
    """
    if augment_train is None:
        augment_train = data.input_shape[-1] == 3 and data.input_shape[0] >= 32
    if mean is None or std is None:
        mean, std = channel_statistics(data.x_train)
    normalize = _normalize(mean, std)
    n = len(data.y_train)
    images = tf.data.Dataset.from_tensor_slices((data.x_train, data.y_train))
    train = images.shuffle(n, seed=seed, reshuffle_each_iteration=True).repeat()
    if augment_train:
        seeds = tf.data.Dataset.random(seed=seed).batch(2)
        train = tf.data.Dataset.zip((train, seeds)).map(
            lambda xy, s: (augment(xy[0], s), xy[1]),
            num_parallel_calls=tf.data.AUTOTUNE,
            deterministic=True,
        )
    train = train.batch(batch_size).map(
        lambda x, y: (normalize(x), y), num_parallel_calls=tf.data.AUTOTUNE
    )

    def augmented_passes(seed):
        passes = images.shuffle(n, seed=seed, reshuffle_each_iteration=True)
        seeds = tf.data.Dataset.random(
            seed=seed, rerandomize_each_iteration=True
        ).batch(2)
        return (
            tf.data.Dataset.zip((passes, seeds))
            .map(lambda xy, s: (augment(xy[0], s), xy[1]))
            .batch(max(batch_size, 256))
            .map(lambda a, b: (normalize(a), b))
        )

    def plain(x, y):
        return (
            tf.data.Dataset.from_tensor_slices((x, y))
            .batch(max(batch_size, 256))
            .map(lambda a, b: (normalize(a), b))
        )

    return {
        "train": train.prefetch(tf.data.AUTOTUNE),
        "train_eval": plain(data.x_train, data.y_train),
        "train_eval_augmented": (
            augmented_passes(seed + 1)
            if augment_train
            else plain(data.x_train, data.y_train)
        ),
        "test": plain(data.x_test, data.y_test),
        "steps_per_epoch": -(-n // batch_size),
        "augmented": bool(augment_train),
        "mean": mean,
        "std": std,
    }
