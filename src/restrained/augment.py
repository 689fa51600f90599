"""Crop-and-flip augmentation in JAX, as the authors' torchvision pipeline does it.

``RandomCrop(32, padding=4)`` followed by ``RandomHorizontalFlip()``: pad each image by
``pad`` pixels on every side, cut a window of the original size at an offset drawn
uniformly from ``{0, ..., 2 pad}`` in each direction, and mirror it left-right with
probability 1/2. Everything is drawn from one explicit key, so the members of one seed,
which share the key, see the same augmented batch.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp


def crop_and_flip(key: jax.Array, images: jax.Array, pad: int = 4, pad_value: Any = 0.0):
    """Randomly crop (after padding with ``pad_value``) and flip a batch ``(B, H, W, C)``.

    ``pad_value`` is a scalar or one value per channel: the value of a black pixel in the
    data's normalisation, so that padding matches padding before normalising.
    """
    if images.ndim != 4:
        raise ValueError(f"images must have shape (B, H, W, C), got {images.shape}")
    if pad < 0:
        raise ValueError(f"pad must be >= 0, got {pad}")
    b, h, w, c = images.shape
    fill = jnp.broadcast_to(jnp.asarray(pad_value, images.dtype), (c,))
    canvas = jnp.broadcast_to(fill, (b, h + 2 * pad, w + 2 * pad, c))
    canvas = canvas.at[:, pad : pad + h, pad : pad + w, :].set(images)
    k_row, k_col, k_flip = jax.random.split(key, 3)
    rows = jax.random.randint(k_row, (b,), 0, 2 * pad + 1)
    cols = jax.random.randint(k_col, (b,), 0, 2 * pad + 1)

    def crop(img: jax.Array, r: jax.Array, col: jax.Array) -> jax.Array:
        return jax.lax.dynamic_slice(img, (r, col, 0), (h, w, c))

    out = jax.vmap(crop)(canvas, rows, cols)
    flip = jax.random.bernoulli(k_flip, 0.5, (b,))
    return jnp.where(flip[:, None, None, None], out[:, :, ::-1, :], out)
