"""Reference networks of the HyperSparse paper, and small models for devices.

Plain builder functions that return functional Keras 3 models, or with
`flavour="tf_keras"` the same network as a tf_keras (Keras 2) model, e.g. to
hand to tensorflow-model-optimization. Every convolution and dense layer has a
unique name, the same in both flavours, so that the keys of `prunable_weights`
and of mask dictionaries are stable across builds and weights copy from one
flavour to the other layer by layer.

- `resnet`: the "doubled" CIFAR ResNet of the paper's code (ResNet-32: 1,855,584
  prunable weights for 10 classes).
- `vgg19_bn`: VGG-19 with BatchNorm as in the paper's code (20,024,000 prunable
  weights for 10 classes).
- `lenet_300_100`: the classic fully connected LeNet-300-100.
- `small_cnn`: a CNN whose full-integer TFLite model fits a microcontroller.
- `mobilenet_style`: a depthwise-separable CNN (MobileNet-style) for phones
  and microcontrollers.

Convolution and dense kernels are initialized with `he_normal` by default.
`resnet` and `vgg19_bn` also build the reference code's exact network
(`hypersparse_tf.reference.model_settings()`, what the paper presets use):
PyTorch's BatchNorm (`batchnorm_momentum=0.9`, i.e. PyTorch's 0.1, and
`batchnorm_epsilon=1e-5`), its initialization (`kernel_initializer=
"reference"`: Kaiming normal, untruncated, fan_out for the ResNet and fan_in
for VGG; dense kernels normal with std 0.01) and, for the ResNet, symmetric
padding of the stride-2 3x3 convolutions (`symmetric_padding=True`: PyTorch's
`padding=1`; TF's `"same"` pads only the bottom/right there, which shifts the
main path one pixel against the 1x1 shortcut).
"""

import random

import keras

from hypersparse_tf import validation

# The VGG-19 configuration of the reference code; "M" is a 2x2 max-pool.
VGG19_CONFIG = (
    64,
    64,
    "M",
    128,
    128,
    "M",
    256,
    256,
    256,
    256,
    "M",
    512,
    512,
    512,
    512,
    "M",
    512,
    512,
    512,
    512,
)

_INITIALIZER = "he_normal"
FLAVOURS = ("keras", "tf_keras")


class _Style:
    """The per-layer settings of one paper model (see the module docstring)."""

    def __init__(
        self,
        k,
        batchnorm_momentum,
        batchnorm_epsilon,
        kernel_initializer,
        symmetric_padding=False,
        conv_fan="fan_out",
    ):
        self.k = k
        self.momentum = validation.check_float(
            batchnorm_momentum, "batchnorm_momentum", 0, 1, exclusive_maximum=True
        )
        self.epsilon = validation.check_float(
            batchnorm_epsilon, "batchnorm_epsilon", 0, exclusive_minimum=True
        )
        self.symmetric_padding = validation.check_bool(
            symmetric_padding, "symmetric_padding"
        )
        # A new initializer per layer: an unseeded instance used twice gives
        # the same values twice.
        if kernel_initializer == "reference":
            self.conv_initializer = lambda: k.initializers.VarianceScaling(
                2.0, conv_fan, "untruncated_normal"
            )
            self.dense_initializer = lambda: k.initializers.RandomNormal(stddev=0.01)
        else:
            # Checked on a throw-away instance without using up a draw of the
            # random seeds Keras gives unseeded initializers (the same seed
            # must build the same model).
            state = random.getstate()
            try:
                k.initializers.get(kernel_initializer)
            except (ValueError, TypeError) as error:
                raise ValueError(
                    validation.invalid(
                        "kernel_initializer",
                        '"reference" or a Keras initializer',
                        kernel_initializer,
                    )
                ) from error
            finally:
                random.setstate(state)
            self.conv_initializer = self.dense_initializer = lambda: (
                k.initializers.get(kernel_initializer)
                if isinstance(kernel_initializer, str)
                else kernel_initializer
            )

    def batchnorm(self, x, name):
        return self.k.layers.BatchNormalization(
            momentum=self.momentum, epsilon=self.epsilon, name=name
        )(x)

    def conv(self, x, filters, kernel_size, name, strides=1):
        padding = "same"
        if kernel_size > 1 and strides > 1 and self.symmetric_padding:
            x = self.k.layers.ZeroPadding2D(kernel_size // 2, name=f"{name}_pad")(x)
            padding = "valid"
        elif kernel_size == 1:
            padding = "valid"
        return self.k.layers.Conv2D(
            filters,
            kernel_size,
            strides=strides,
            padding=padding,
            use_bias=False,
            kernel_initializer=self.conv_initializer(),
            name=name,
        )(x)

    def classifier(self, x, num_classes):
        return self.k.layers.Dense(
            num_classes, kernel_initializer=self.dense_initializer(), name="predictions"
        )(x)


def _keras_module(flavour):
    """`keras` (Keras 3) or `tf_keras` (Keras 2, imported on demand)."""
    validation.check_choice(flavour, "flavour", FLAVOURS)
    if flavour == "keras":
        return keras
    if flavour == "tf_keras":
        try:
            import tf_keras
        except ImportError as error:
            raise ImportError(
                'flavour="tf_keras" needs the tf-keras package: pip install '
                '"hypersparse_tf[tfmot]"'
            ) from error
    return tf_keras


def _check_num_classes(num_classes):
    return validation.check_int(num_classes, "num_classes", 2)


def _check_input_shape(input_shape, rank=None, min_size=1, requirement=None):
    """Returns `input_shape` as a tuple of ints after checking it.

    Args:
        input_shape: The shape to check, without the batch dimension.
        rank: Required length of the shape, or None for any length >= 1.
        min_size: Smallest height and width allowed (for `rank == 3`).
        requirement: Why `min_size` is needed, for the error message.
    """
    expected = (
        "a tuple (height, width, channels) of positive ints"
        if rank == 3
        else "a non-empty tuple of positive ints"
    )
    if (
        not isinstance(input_shape, (tuple, list))
        or not input_shape
        or not all(validation.is_int(d) and d > 0 for d in input_shape)
        or (rank is not None and len(input_shape) != rank)
    ):
        raise ValueError(
            f"Invalid value for argument `input_shape`. Expected {expected}, "
            f"without the batch dimension. Received: input_shape={input_shape!r}"
        )
    input_shape = tuple(int(d) for d in input_shape)
    if rank == 3 and min(input_shape[:2]) < min_size:
        raise ValueError(
            "Invalid value for argument `input_shape`. Expected height and "
            f"width >= {min_size} ({requirement}). Received: "
            f"input_shape={input_shape!r}"
        )
    return input_shape


def _conv_bn_relu(k, x, filters, name, strides=1, kernel_size=3, style=None):
    style = style or _Style(k, 0.99, 1e-3, _INITIALIZER)
    x = style.conv(x, filters, kernel_size, f"{name}_conv", strides)
    x = style.batchnorm(x, f"{name}_bn")
    return k.layers.ReLU(name=f"{name}_relu")(x)


def _basic_block(style, x, filters, strides, name):
    """Two 3x3 conv + BN, a 1x1 conv + BN shortcut where the shape changes."""
    k = style.k
    shortcut = x
    y = style.conv(x, filters, 3, f"{name}_conv1", strides)
    y = style.batchnorm(y, f"{name}_bn1")
    y = k.layers.ReLU(name=f"{name}_relu1")(y)
    y = style.conv(y, filters, 3, f"{name}_conv2")
    y = style.batchnorm(y, f"{name}_bn2")
    if strides != 1 or x.shape[-1] != filters:
        shortcut = style.conv(x, filters, 1, f"{name}_shortcut_conv", strides)
        shortcut = style.batchnorm(shortcut, f"{name}_shortcut_bn")
    y = k.layers.Add(name=f"{name}_add")([y, shortcut])
    return k.layers.ReLU(name=f"{name}_out")(y)


def _classifier(k, x, num_classes):
    return _Style(k, 0.99, 1e-3, _INITIALIZER).classifier(x, num_classes)


def resnet(
    depth=32,
    num_classes=10,
    input_shape=(32, 32, 3),
    width=32,
    *,
    flavour="keras",
    batchnorm_momentum=0.99,
    batchnorm_epsilon=1e-3,
    kernel_initializer=_INITIALIZER,
    symmetric_padding=False,
):
    """The "doubled" CIFAR ResNet of the HyperSparse reference code.

    A 3x3 stem convolution with `width` filters, then three stages of
    `(depth - 2) / 6` basic blocks with `width`, `2 * width` and `4 * width`
    filters. A basic block is conv3x3-BN-ReLU-conv3x3-BN plus its shortcut,
    then ReLU; convolutions have no bias. The first block of stages 2 and 3
    has stride 2 and a 1x1 convolution + BN shortcut. Global average pooling
    and a dense classifier follow. The model outputs logits.

    With the defaults (ResNet-32 on CIFAR-10) it has 1,855,584 prunable
    weights (convolution and dense kernels), as in the paper.

    Args:
        depth: Int. Number of weight layers, `6n + 2` with `n >= 1` (8, 14,
            20, 32, 44, 56, 110, ...). Defaults to `32`.
        num_classes: Int >= 2. Number of classes. Defaults to `10`.
        input_shape: Tuple `(height, width, channels)` of positive ints.
            Defaults to `(32, 32, 3)`.
        width: Int >= 1. Filters of the stem and of the first stage. The
            standard CIFAR ResNet has 16; the paper's code doubles it.
            Defaults to `32`.
        flavour: `"keras"` (Keras 3) or `"tf_keras"` (Keras 2, for
            tensorflow-model-optimization). Defaults to `"keras"`.
        batchnorm_momentum: Float in [0, 1). Keras' BatchNorm momentum (the
            reference's PyTorch 0.1 is 0.9 here). Defaults to `0.99`.
        batchnorm_epsilon: Float > 0. Defaults to `1e-3` (the reference:
            `1e-5`).
        kernel_initializer: A Keras initializer, or `"reference"` (Kaiming
            normal with fan_out for convolutions, normal std 0.01 for the
            classifier). Defaults to `"he_normal"`.
        symmetric_padding: Bool. Pad the stride-2 3x3 convolutions by one
            pixel on every side (explicit `ZeroPadding2D` + `"valid"`), as
            the reference; `"same"` pads bottom/right only. Defaults to
            `False`.

    Returns:
        A functional `keras.Model` (`tf_keras.Model`) named `f"resnet{depth}"`.

    Example:

    >>> model = hypersparse_tf.models.resnet(32, num_classes=10)
    >>> len(hypersparse_tf.prunable_weights(model))
    34
    """
    if not validation.is_int(depth) or depth < 8 or (depth - 2) % 6 != 0:
        raise ValueError(
            "Invalid value for argument `depth`. Expected 6n+2 with n >= 1 "
            f"(8, 14, 20, 32, 44, 56, 110, ...). Received: depth={depth!r}"
        )
    if not validation.is_int(width) or width < 1:
        raise ValueError(
            "Invalid value for argument `width`. Expected an int >= 1. "
            f"Received: width={width!r}"
        )
    num_classes = _check_num_classes(num_classes)
    input_shape = _check_input_shape(input_shape, rank=3)
    blocks = (depth - 2) // 6

    k = _keras_module(flavour)
    style = _Style(
        k,
        batchnorm_momentum,
        batchnorm_epsilon,
        kernel_initializer,
        symmetric_padding,
        conv_fan="fan_out",
    )
    inputs = k.Input(input_shape, name="image")
    x = _conv_bn_relu(k, inputs, width, "stem", style=style)
    for stage in range(3):
        filters = width * 2**stage
        for block in range(blocks):
            strides = 2 if stage > 0 and block == 0 else 1
            x = _basic_block(
                style, x, filters, strides, f"stage{stage + 1}_block{block + 1}"
            )
    x = k.layers.GlobalAveragePooling2D(name="pool")(x)
    outputs = style.classifier(x, num_classes)
    return k.Model(inputs, outputs, name=f"resnet{depth}")


def vgg19_bn(
    num_classes=10,
    input_shape=(32, 32, 3),
    *,
    flavour="keras",
    batchnorm_momentum=0.99,
    batchnorm_epsilon=1e-3,
    kernel_initializer=_INITIALIZER,
):
    """VGG-19 with BatchNorm, as in the HyperSparse reference code.

    Sixteen 3x3 convolutions (no bias) + BN + ReLU in the configuration
    `VGG19_CONFIG`, a 2x2 max-pool at each "M", then an average pool over the
    whole remaining `(H/16, W/16)` map (2x2 for CIFAR, 4x4 for 64x64
    TinyImageNet: the reference's `AvgPool2d(2)` / `AvgPool2d(4)`), a
    flatten and a single `Dense(512 -> classes)`. The model outputs logits.
    (The reference's convolutions have a bias, which the BatchNorm after
    each makes redundant; these have none.)

    With the defaults (CIFAR-10) it has 20,024,000 prunable weights.

    Args:
        num_classes: Int >= 2. Number of classes. Defaults to `10`.
        input_shape: Tuple `(height, width, channels)` of positive ints, with
            height and width >= 32. Defaults to `(32, 32, 3)`.
        flavour: `"keras"` (Keras 3) or `"tf_keras"` (Keras 2, for
            tensorflow-model-optimization). Defaults to `"keras"`.
        batchnorm_momentum: Float in [0, 1). Defaults to `0.99` (the
            reference: 0.9, PyTorch's 0.1).
        batchnorm_epsilon: Float > 0. Defaults to `1e-3` (the reference:
            `1e-5`).
        kernel_initializer: A Keras initializer, or `"reference"` (Kaiming
            normal with fan_in for convolutions, normal std 0.01 for the
            classifier). Defaults to `"he_normal"`.

    Returns:
        A functional `keras.Model` (`tf_keras.Model`) named `"vgg19_bn"`.

    Example:

    >>> model = hypersparse_tf.models.vgg19_bn(num_classes=100)
    """
    num_classes = _check_num_classes(num_classes)
    input_shape = _check_input_shape(
        input_shape,
        rank=3,
        min_size=32,
        requirement="four 2x2 max-pools and a 2x2 average pool",
    )
    k = _keras_module(flavour)
    style = _Style(
        k, batchnorm_momentum, batchnorm_epsilon, kernel_initializer, conv_fan="fan_in"
    )
    inputs = k.Input(input_shape, name="image")
    x = inputs
    conv_index = 0
    pool_index = 0
    for entry in VGG19_CONFIG:
        if entry == "M":
            pool_index += 1
            x = k.layers.MaxPooling2D(2, name=f"pool{pool_index}")(x)
        else:
            conv_index += 1
            name = f"block{pool_index + 1}_{conv_index}"
            x = _conv_bn_relu(k, x, entry, name, style=style)
    pool = (input_shape[0] // 16, input_shape[1] // 16)
    x = k.layers.AveragePooling2D(pool, name="avg_pool")(x)
    x = k.layers.Flatten(name="flatten")(x)
    outputs = style.classifier(x, num_classes)
    return k.Model(inputs, outputs, name="vgg19_bn")


def lenet_300_100(num_classes=10, input_shape=(28, 28, 1), *, flavour="keras"):
    """LeNet-300-100: a fully connected network with 300 and 100 hidden units.

    Flatten, Dense(300) + ReLU, Dense(100) + ReLU, Dense(num_classes). The
    model outputs logits. For 28x28 images and 10 classes it has 266,200
    prunable weights (dense kernels).

    Args:
        num_classes: Int >= 2. Number of classes. Defaults to `10`.
        input_shape: Non-empty tuple of positive ints. Defaults to
            `(28, 28, 1)`.
        flavour: `"keras"` (Keras 3) or `"tf_keras"` (Keras 2, for
            tensorflow-model-optimization). Defaults to `"keras"`.

    Returns:
        A functional `keras.Model` (`tf_keras.Model`) named `"lenet_300_100"`.

    Example:

    >>> model = hypersparse_tf.models.lenet_300_100()
    """
    num_classes = _check_num_classes(num_classes)
    input_shape = _check_input_shape(input_shape)
    k = _keras_module(flavour)
    inputs = k.Input(input_shape, name="image")
    x = k.layers.Flatten(name="flatten")(inputs)
    x = k.layers.Dense(
        300, activation="relu", kernel_initializer=_INITIALIZER, name="dense1"
    )(x)
    x = k.layers.Dense(
        100, activation="relu", kernel_initializer=_INITIALIZER, name="dense2"
    )(x)
    outputs = _classifier(k, x, num_classes)
    return k.Model(inputs, outputs, name="lenet_300_100")


def small_cnn(num_classes=10, input_shape=(28, 28, 1), *, flavour="keras"):
    """A small CNN for microcontrollers.

    Two blocks of 3x3 convolution (no bias) + BN + ReLU + 2x2 max-pool, with
    16 and 32 filters, then a flatten and a dense classifier. The model
    outputs logits. Batch normalization folds into the convolutions on
    export, so the full-integer TFLite model stays small: 20,432 prunable
    weights (~21k parameters, well under 64 KB as int8) for 28x28x1 images
    and 10 classes, 6,032 for 8x8x1 images.

    Args:
        num_classes: Int >= 2. Number of classes. Defaults to `10`.
        input_shape: Tuple `(height, width, channels)` of positive ints, with
            height and width >= 4. Defaults to `(28, 28, 1)`.
        flavour: `"keras"` (Keras 3) or `"tf_keras"` (Keras 2, for
            tensorflow-model-optimization). Defaults to `"keras"`.

    Returns:
        A functional `keras.Model` (`tf_keras.Model`) named `"small_cnn"`.

    Example:

    >>> model = hypersparse_tf.models.small_cnn(input_shape=(8, 8, 1))
    """
    num_classes = _check_num_classes(num_classes)
    input_shape = _check_input_shape(
        input_shape, rank=3, min_size=4, requirement="two 2x2 max-pools"
    )
    k = _keras_module(flavour)
    inputs = k.Input(input_shape, name="image")
    x = inputs
    for index, filters in enumerate((16, 32), start=1):
        x = _conv_bn_relu(k, x, filters, f"block{index}")
        x = k.layers.MaxPooling2D(2, name=f"block{index}_pool")(x)
    x = k.layers.Flatten(name="flatten")(x)
    outputs = _classifier(k, x, num_classes)
    return k.Model(inputs, outputs, name="small_cnn")


# (filters as a multiple of `width`, stride) of the blocks of `mobilenet_style`.
_MOBILENET_BLOCKS = ((2, 1), (4, 2), (4, 1), (8, 2), (8, 1))


def mobilenet_style(
    num_classes=10,
    input_shape=(32, 32, 3),
    *,
    width=16,
    separable=False,
    flavour="keras",
):
    """A MobileNet-style depthwise-separable CNN for phones and boards.

    A 3x3 stride-2 convolution stem (`width` filters) + BN + ReLU, then five
    blocks, each a 3x3 `DepthwiseConv2D` (stride 1, 2, 1, 2, 1) + BN + ReLU
    and a 1x1 `Conv2D` (2, 4, 4, 8 and 8 times `width` filters) + BN + ReLU,
    then a global average pool and a dense classifier; no convolution has a
    bias (BatchNorm folds into them on export). It is the shape XNNPACK's
    sparse inference looks for (a 3x3 stride-2 stem on 3 input channels, 1x1
    and depthwise convolutions, a global mean at the end), and its full-integer
    model fits a microcontroller: 35,680 prunable weights (38,634 parameters
    with BatchNorm) and 1,149,184 multiply-adds for 32x32x3 images and 10
    classes.

    Args:
        num_classes: Int >= 2. Number of classes. Defaults to `10`.
        input_shape: Tuple `(height, width, channels)` of positive ints, with
            height and width >= 8. Defaults to `(32, 32, 3)`.
        width: Int >= 1. Filters of the stem; the blocks have 2x to 8x as
            many. Defaults to `16`.
        separable: Bool. Whether each block is one `SeparableConv2D` (+ BN +
            ReLU) instead of a `DepthwiseConv2D` and a 1x1 `Conv2D` with BN
            and ReLU after each. TFLite converts both to the same two ops.
            Defaults to `False`.
        flavour: `"keras"` (Keras 3) or `"tf_keras"` (Keras 2, for
            tensorflow-model-optimization). Defaults to `"keras"`.

    Returns:
        A functional `keras.Model` (`tf_keras.Model`) named
        `"mobilenet_style"`.

    Example:

    >>> model = hypersparse_tf.models.mobilenet_style(input_shape=(32, 32, 3))
    """
    num_classes = _check_num_classes(num_classes)
    input_shape = _check_input_shape(
        input_shape, rank=3, min_size=8, requirement="three stride-2 layers"
    )
    width = validation.check_int(width, "width", 1)
    separable = validation.check_bool(separable, "separable")
    k = _keras_module(flavour)
    style = _Style(k, 0.99, 1e-3, _INITIALIZER)
    inputs = k.Input(input_shape, name="image")
    x = _conv_bn_relu(k, inputs, width, "stem", strides=2, style=style)
    for index, (multiple, strides) in enumerate(_MOBILENET_BLOCKS, start=1):
        name = f"block{index}"
        if separable:
            x = k.layers.SeparableConv2D(
                multiple * width,
                3,
                strides=strides,
                padding="same",
                use_bias=False,
                depthwise_initializer=_INITIALIZER,
                pointwise_initializer=_INITIALIZER,
                name=f"{name}_sep",
            )(x)
        else:
            x = k.layers.DepthwiseConv2D(
                3,
                strides=strides,
                padding="same",
                use_bias=False,
                depthwise_initializer=_INITIALIZER,
                name=f"{name}_dw",
            )(x)
            x = style.batchnorm(x, f"{name}_dw_bn")
            x = k.layers.ReLU(name=f"{name}_dw_relu")(x)
            x = style.conv(x, multiple * width, 1, f"{name}_pw")
        x = style.batchnorm(x, f"{name}_bn")
        x = k.layers.ReLU(name=f"{name}_relu")(x)
    x = k.layers.GlobalAveragePooling2D(name="pool")(x)
    outputs = _classifier(k, x, num_classes)
    return k.Model(inputs, outputs, name="mobilenet_style")
