"""Small Flax CNNs, and a functional view of any ``nnx.Module``.

The book trains with pure functions of a parameter pytree, so that two copies (or a
whole ensemble) can be stepped in lockstep, vmapped and compared entry by entry.
:func:`functional` splits an ``nnx.Module`` into ``apply(params, x)`` and ``params``.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

Params = Any
Apply = Callable[[Params, jax.Array], jax.Array]

ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "relu": jax.nn.relu,
    "swish": jax.nn.swish,
    "tanh": jnp.tanh,
}


CONV_IMPLS = ("lax", "matmul", "auto")


def resolve_conv_impl(impl: str) -> str:
    """``auto`` is ``matmul`` on CPU and ``lax`` elsewhere; see :func:`conv_apply`."""
    if impl not in CONV_IMPLS:
        raise ValueError(f"conv_impl must be one of {CONV_IMPLS}, got {impl!r}")
    if impl == "auto":
        return "matmul" if jax.default_backend() == "cpu" else "lax"
    return impl


def _explicit_padding(padding: Any, kernel_size: tuple[int, ...]) -> list[tuple[int, int]]:
    if isinstance(padding, str):
        if padding.upper() == "VALID":
            return [(0, 0)] * len(kernel_size)
        if padding.upper() == "SAME":
            return [((k - 1) // 2, k - 1 - (k - 1) // 2) for k in kernel_size]
        raise ValueError(f"unsupported padding {padding!r}")
    return [(int(lo), int(hi)) for lo, hi in padding]


def conv_apply(conv: nnx.Conv, x: jax.Array, impl: str = "lax") -> jax.Array:
    r"""Apply an ``nnx.Conv`` (1-D or 2-D, stride-1 'SAME' or explicit padding).

    ``impl="lax"`` calls the module (XLA's convolution). ``impl="matmul"`` computes the
    same cross-correlation as patches times kernel: the input is padded, the
    :math:`\prod k` shifted (strided) views are concatenated along channels, and one
    matrix product with the kernel reshaped to :math:`(\prod k\,C_{in}) \times C_{out}`
    gives the output. The two agree to rounding, not bit for bit. ``matmul`` exists
    because XLA on CPU runs a convolution inside a compiled loop (``lax.scan``) about ten
    times slower than outside it, while a matrix product runs at full speed in both.
    """
    impl = resolve_conv_impl(impl)
    if impl == "lax":
        return conv(x)
    kernel = conv.kernel[...]
    ksize = tuple(kernel.shape[:-2])
    strides = conv.strides if conv.strides is not None else 1
    strides = (strides,) * len(ksize) if isinstance(strides, int) else tuple(strides)
    pads = _explicit_padding(conv.padding, ksize)
    xp = jnp.pad(x, ((0, 0), *pads, (0, 0)))
    out = [(xp.shape[1 + d] - ksize[d]) // strides[d] + 1 for d in range(len(ksize))]
    views = []
    for offsets in itertools.product(*(range(k) for k in ksize)):
        index = tuple(
            slice(o, o + s * (n - 1) + 1, s) for o, s, n in zip(offsets, strides, out, strict=True)
        )
        views.append(xp[(slice(None), *index, slice(None))])
    cols = jnp.concatenate(views, axis=-1) if len(views) > 1 else views[0]
    y = cols @ kernel.reshape(-1, kernel.shape[-1])
    if conv.bias is not None:
        y = y + conv.bias[...]
    return y


class SmallCNN(nnx.Module):
    """``depth`` 3x3 'same' convolutions of ``width`` channels, 2x2 average pooling, a linear head.

    ``x`` has shape ``(N, H, W, C)`` with ``(H, W) == image_size``; the output is
    ``(N, num_classes)`` logits. ``conv_impl`` chooses how the convolutions are computed
    (:func:`conv_apply`); the default, ``lax``, is XLA's convolution.
    """

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 10,
        width: int = 8,
        depth: int = 2,
        activation: str = "swish",
        image_size: tuple[int, int] = (8, 8),
        *,
        rngs: nnx.Rngs,
        conv_impl: str = "lax",
    ) -> None:
        self.conv_impl = resolve_conv_impl(conv_impl)
        if depth < 1:
            raise ValueError(f"depth must be >= 1, got {depth}")
        if width < 1:
            raise ValueError(f"width must be >= 1, got {width}")
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {activation!r}")
        if image_size[0] % 2 or image_size[1] % 2:
            raise ValueError(f"image_size must be even in both dimensions, got {image_size}")
        self.in_channels = in_channels
        self.image_size = tuple(image_size)
        self.activation = activation
        channels = [in_channels] + [width] * depth
        self.convs = nnx.List(
            [
                nnx.Conv(c_in, c_out, (3, 3), rngs=rngs)
                for c_in, c_out in itertools.pairwise(channels)
            ]
        )
        pooled = (image_size[0] // 2) * (image_size[1] // 2) * width
        self.head = nnx.Linear(pooled, num_classes, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        if x.ndim != 4 or x.shape[1:] != (*self.image_size, self.in_channels):
            raise ValueError(
                f"SmallCNN expects images of shape (N, {self.image_size[0]}, "
                f"{self.image_size[1]}, {self.in_channels}), got {x.shape}"
            )
        act = ACTIVATIONS[self.activation]
        for conv in self.convs:
            x = act(conv_apply(conv, x, self.conv_impl))
        n, h, w, c = x.shape
        x = x.reshape(n, h // 2, 2, w // 2, 2, c).mean(axis=(2, 4))
        return self.head(x.reshape(n, -1))


def functional(module: nnx.Module) -> tuple[Apply, Params]:
    """Split a module into a pure ``apply(params, x)`` and its parameter pytree."""
    graphdef, params = nnx.split(module, nnx.Param)

    def apply(p: Params, x: jax.Array) -> jax.Array:
        return nnx.merge(graphdef, p)(x)

    return apply, params


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Mean softmax cross-entropy of integer labels."""
    logp = jax.nn.log_softmax(logits)
    return -jnp.mean(jnp.take_along_axis(logp, labels[:, None], axis=1))


def accuracy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Fraction of correct arg-max predictions."""
    return jnp.mean(jnp.argmax(logits, axis=-1) == labels)


# --------------------------------------------------------------------------------------
# Models of the full-scale experiments (chapters 8-10): the authors' CIFAR ResNets, VGG-16
# and small 1-D / 2-D CNNs for CPU, all behind one pure-function interface, Network.
# --------------------------------------------------------------------------------------

SWISH_BETA = 5.0  # the authors' resnet_swish.py: x * sigmoid(5 x)


def swish5(x: jax.Array) -> jax.Array:
    r"""The authors' Swish, :math:`x\,\sigma(5x)`."""
    return x * jax.nn.sigmoid(SWISH_BETA * x)


NETWORK_ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "relu": jax.nn.relu,
    "swish": swish5,
}

# The authors' conv init: N(0, 2 / (k_h k_w C_out)), i.e. He-normal with fan-out.
_conv_init = nnx.initializers.variance_scaling(2.0, "fan_out", "normal")


def _torch_linear_bias_init(fan_in: int):
    bound = 1.0 / float(fan_in) ** 0.5

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


def _torch_linear(d_in: int, d_out: int, rngs: nnx.Rngs) -> nnx.Linear:
    """PyTorch's default ``nn.Linear`` init: U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for both."""
    return nnx.Linear(
        d_in,
        d_out,
        kernel_init=nnx.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform"),
        bias_init=_torch_linear_bias_init(d_in),
        rngs=rngs,
    )


def _bn(channels: int, rngs: nnx.Rngs) -> nnx.BatchNorm:
    # PyTorch BatchNorm2d(momentum=0.1, eps=1e-5): running <- 0.9 running + 0.1 batch.
    return nnx.BatchNorm(channels, momentum=0.9, epsilon=1e-5, rngs=rngs)


def _conv(c_in: int, c_out: int, size: int, stride: int, rngs: nnx.Rngs) -> nnx.Conv:
    return nnx.Conv(
        c_in,
        c_out,
        (size, size),
        strides=(stride, stride),
        padding=((size // 2, size // 2), (size // 2, size // 2)),
        use_bias=False,
        kernel_init=_conv_init,
        rngs=rngs,
    )


class BasicBlock(nnx.Module):
    """conv3x3-BN-act-conv3x3-BN, plus the shortcut, then act (He et al., CIFAR variant).

    The shortcut is the identity, or a 1x1 strided conv + BN where the shape changes
    (option B, as in the authors' ``resnet.py``).
    """

    def __init__(
        self, c_in: int, c_out: int, stride: int, activation: str, conv_impl: str, *, rngs: nnx.Rngs
    ):
        self.act = NETWORK_ACTIVATIONS[activation]
        self.conv_impl = conv_impl
        self.conv1 = _conv(c_in, c_out, 3, stride, rngs)
        self.bn1 = _bn(c_out, rngs)
        self.conv2 = _conv(c_out, c_out, 3, 1, rngs)
        self.bn2 = _bn(c_out, rngs)
        if stride != 1 or c_in != c_out:
            self.shortcut_conv = _conv(c_in, c_out, 1, stride, rngs)
            self.shortcut_bn = _bn(c_out, rngs)
        else:
            self.shortcut_conv = None
            self.shortcut_bn = None

    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        ra, impl = not train, self.conv_impl
        out = self.act(self.bn1(conv_apply(self.conv1, x, impl), use_running_average=ra))
        out = self.bn2(conv_apply(self.conv2, out, impl), use_running_average=ra)
        if self.shortcut_conv is not None:
            x = self.shortcut_bn(conv_apply(self.shortcut_conv, x, impl), use_running_average=ra)
        return self.act(out + x)


class CifarResNet(nnx.Module):
    """The authors' ``ResNet_Cifar``: stem conv3x3(16)-BN-act, three stages of
    ``blocks_per_stage`` basic blocks (16, 32, 64 channels; strides 1, 2, 2), global
    average pooling (the authors' AvgPool(8) on 32x32 inputs), a linear head.

    ResNet-20: 3 blocks per stage; ResNet-56: 9 (depth = 6 n + 2).
    """

    def __init__(
        self,
        blocks_per_stage: int,
        in_channels: int = 3,
        num_classes: int = 10,
        activation: str = "relu",
        *,
        rngs: nnx.Rngs,
        conv_impl: str = "lax",
    ) -> None:
        self.conv_impl = resolve_conv_impl(conv_impl)
        if blocks_per_stage < 1:
            raise ValueError(f"blocks_per_stage must be >= 1, got {blocks_per_stage}")
        if activation not in NETWORK_ACTIVATIONS:
            raise ValueError(
                f"activation must be one of {sorted(NETWORK_ACTIVATIONS)}, got {activation!r}"
            )
        self.in_channels = in_channels
        self.act = NETWORK_ACTIVATIONS[activation]
        self.conv1 = _conv(in_channels, 16, 3, 1, rngs)
        self.bn1 = _bn(16, rngs)
        blocks = []
        c_in = 16
        for c_out, stride in ((16, 1), (32, 2), (64, 2)):
            for b in range(blocks_per_stage):
                blocks.append(
                    BasicBlock(
                        c_in, c_out, stride if b == 0 else 1, activation, self.conv_impl, rngs=rngs
                    )
                )
                c_in = c_out
        self.blocks = nnx.List(blocks)
        self.fc = _torch_linear(64, num_classes, rngs)

    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        if x.ndim != 4 or x.shape[-1] != self.in_channels:
            raise ValueError(
                f"CifarResNet expects images of shape (N, H, W, {self.in_channels}), got {x.shape}"
            )
        x = self.act(
            self.bn1(conv_apply(self.conv1, x, self.conv_impl), use_running_average=not train)
        )
        for block in self.blocks:
            x = block(x, train)
        return self.fc(x.mean(axis=(1, 2)))


VGG16_LAYOUT = (
    64,
    64,
    "M",
    128,
    128,
    "M",
    256,
    256,
    256,
    "M",
    512,
    512,
    512,
    "M",
    512,
    512,
    512,
    "M",
)


class VGG16(nnx.Module):
    """VGG-16 with BatchNorm for 32x32 inputs: thirteen conv3x3-BN-ReLU layers, five 2x2
    max-pools, one linear head (the common CIFAR variant; the paper's exact VGG code is
    not in the authors' repository)."""

    def __init__(
        self, in_channels: int = 3, num_classes: int = 10, *, rngs: nnx.Rngs, conv_impl: str = "lax"
    ) -> None:
        self.in_channels = in_channels
        self.conv_impl = resolve_conv_impl(conv_impl)
        convs, bns = [], []
        c_in = in_channels
        for item in VGG16_LAYOUT:
            if item == "M":
                continue
            convs.append(_conv(c_in, int(item), 3, 1, rngs))
            bns.append(_bn(int(item), rngs))
            c_in = int(item)
        self.convs = nnx.List(convs)
        self.bns = nnx.List(bns)
        self.fc = _torch_linear(512, num_classes, rngs)

    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        if x.ndim != 4 or x.shape[-1] != self.in_channels or x.shape[1] % 32 or x.shape[2] % 32:
            raise ValueError(
                f"VGG16 expects images of shape (N, 32m, 32n, {self.in_channels}), got {x.shape}"
            )
        i = 0
        for item in VGG16_LAYOUT:
            if item == "M":
                n, h, w, c = x.shape
                x = x.reshape(n, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))
            else:
                y = conv_apply(self.convs[i], x, self.conv_impl)
                x = jax.nn.relu(self.bns[i](y, use_running_average=not train))
                i += 1
        return self.fc(x.mean(axis=(1, 2)))


class SmallCNN1D(nnx.Module):
    """``depth`` 'same' 1-D convolutions (kernel 5) of ``width`` channels, 2x average
    pooling, a linear head. ``x`` has shape ``(N, L, C)`` (MNIST-1D: L = 40, C = 1)."""

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 10,
        width: int = 16,
        depth: int = 2,
        activation: str = "swish",
        length: int = 40,
        *,
        rngs: nnx.Rngs,
        conv_impl: str = "lax",
    ) -> None:
        self.conv_impl = resolve_conv_impl(conv_impl)
        if depth < 1 or width < 1:
            raise ValueError(f"depth and width must be >= 1, got depth={depth}, width={width}")
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {activation!r}")
        if length % 2:
            raise ValueError(f"length must be even, got {length}")
        self.in_channels, self.length, self.activation = in_channels, length, activation
        channels = [in_channels] + [width] * depth
        self.convs = nnx.List(
            [nnx.Conv(a, b, (5,), rngs=rngs) for a, b in itertools.pairwise(channels)]
        )
        self.head = nnx.Linear((length // 2) * width, num_classes, rngs=rngs)

    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        if x.ndim != 3 or x.shape[1:] != (self.length, self.in_channels):
            raise ValueError(
                f"SmallCNN1D expects signals of shape (N, {self.length}, {self.in_channels}), "
                f"got {x.shape}"
            )
        act = ACTIVATIONS[self.activation]
        for conv in self.convs:
            x = act(conv_apply(conv, x, self.conv_impl))
        n, length, c = x.shape
        x = x.reshape(n, length // 2, 2, c).mean(axis=2)
        return self.head(x.reshape(n, -1))


class Network:
    r"""A model as two pure functions, the form the ensemble trainer vmaps.

    * ``init(key) -> (params, stats)``: trainable parameters and BatchNorm running
      statistics (an empty state for models without BatchNorm);
    * ``apply(params, stats, x, train) -> (logits, new_stats)``.

    **BatchNorm.** In training (``train=True``) each layer normalises with the mini-batch
    mean and biased variance, and the running statistics are updated as
    :math:`r \leftarrow 0.9\,r + 0.1\,\text{batch}` (PyTorch's momentum 0.1, eps 1e-5).
    In evaluation (``train=False``) the running statistics are used and not changed.
    For Hessian-vector products use :meth:`loss` with ``train=True`` and discard the new
    statistics: the loss is then a deterministic function of the weights on the given
    batch (the batch statistics are differentiated through, as in training).
    Weight decay acts on every parameter, BatchNorm scale and shift included, as in the
    authors' optimizer; running statistics are not parameters.
    """

    def __init__(self, name: str, build: Callable[[nnx.Rngs], nnx.Module], input_shape: tuple):
        self.name = name
        self.input_shape = tuple(input_shape)
        self._build = build
        module = build(nnx.Rngs(0))
        self.graphdef, _, _ = nnx.split(module, nnx.Param, nnx.BatchStat)
        self._takes_train = not isinstance(module, SmallCNN)

    def init(self, key: jax.Array) -> tuple[Params, Params]:
        """Parameters and BatchNorm statistics of a fresh network drawn from ``key``."""
        _, params, stats = nnx.split(self._build(nnx.Rngs(key)), nnx.Param, nnx.BatchStat)
        return params, stats

    def apply(self, params: Params, stats: Params, x: jax.Array, train: bool):
        """Logits and the updated BatchNorm statistics (unchanged when ``train=False``)."""
        module = nnx.merge(self.graphdef, params, stats, copy=True)
        logits = module(x, train=train) if self._takes_train else module(x)
        return logits, nnx.state(module, nnx.BatchStat)

    def loss(self, params: Params, stats: Params, x: jax.Array, y: jax.Array, train: bool = True):
        """Mean cross-entropy of a batch; ``(loss, (logits, new_stats))``."""
        logits, new_stats = self.apply(params, stats, x, train)
        return cross_entropy(logits, y), (logits, new_stats)


MODEL_NAMES = ("small_cnn", "small_cnn1d", "resnet20", "resnet56", "vgg16")


def build_network(
    name: str,
    input_shape: tuple[int, ...],
    num_classes: int = 10,
    activation: str | None = None,
    width: int | None = None,
    depth: int | None = None,
    conv_impl: str = "auto",
) -> Network:
    """The network ``name`` for examples of shape ``input_shape`` (without the batch axis).

    ``name`` is one of ``small_cnn`` (2-D, (H, W, C)), ``small_cnn1d`` (1-D, (L, C)),
    ``resnet20``, ``resnet56`` (2-D; ``activation`` 'relu' or 'swish' = :math:`x\\sigma(5x)`),
    ``vgg16`` (2-D, H and W multiples of 32). ``width``/``depth`` apply to the small CNNs.
    ``conv_impl`` (:func:`conv_apply`): ``auto`` uses matrix products on CPU, XLA's
    convolution on GPU.

    Raises:
        ValueError: for an unknown name, or a model that does not fit the data's shape.
    """
    if name not in MODEL_NAMES:
        raise ValueError(f"model must be one of {MODEL_NAMES}, got {name!r}")
    shape = tuple(int(s) for s in input_shape)
    two_d = name != "small_cnn1d"
    if two_d and len(shape) != 3:
        raise ValueError(
            f"model {name!r} needs images of shape (H, W, C); the dataset gives {shape}"
        )
    if not two_d and len(shape) != 2:
        raise ValueError(
            f"model {name!r} needs 1-D signals of shape (L, C); the dataset gives {shape}"
        )
    if name == "vgg16" and (shape[0] % 32 or shape[1] % 32):
        raise ValueError(f"model 'vgg16' needs H and W that are multiples of 32, got {shape}")
    if name.startswith("resnet") and (shape[0] < 4 or shape[1] < 4):
        raise ValueError(f"model {name!r} needs H, W >= 4, got {shape}")
    small = {"width": width or 16, "depth": depth or 2, "activation": activation or "swish"}
    impl = resolve_conv_impl(conv_impl)

    def build(rngs: nnx.Rngs) -> nnx.Module:
        if name == "small_cnn":
            return SmallCNN(
                shape[2], num_classes, image_size=shape[:2], rngs=rngs, conv_impl=impl, **small
            )
        if name == "small_cnn1d":
            return SmallCNN1D(
                shape[1], num_classes, length=shape[0], rngs=rngs, conv_impl=impl, **small
            )
        if name == "vgg16":
            return VGG16(shape[2], num_classes, rngs=rngs, conv_impl=impl)
        blocks = {"resnet20": 3, "resnet56": 9}[name]
        act = activation or "relu"
        return CifarResNet(blocks, shape[2], num_classes, act, rngs=rngs, conv_impl=impl)

    return Network(name, build, shape)
