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


class SmallCNN(nnx.Module):
    """``depth`` 3x3 'same' convolutions of ``width`` channels, 2x2 average pooling, a linear head.

    ``x`` has shape ``(N, H, W, C)`` with ``(H, W) == image_size``; the output is
    ``(N, num_classes)`` logits.
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
    ) -> None:
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
            x = act(conv(x))
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
