r"""Floating-point spacing, the k-trick rounding, and the divergence measure ``D``.

Three small tools that the whole book leans on:

* :func:`ulp` -- the gap between a float and the next larger-magnitude float of the
  same dtype, :math:`\operatorname{ulp}(x) = \operatorname{nextafter}(|x|, \infty) - |x|`.
  For a normal float32 number this is :math:`2^{e-23}` with :math:`e = \lfloor\log_2|x|\rfloor`.
* :func:`perturbed_product` -- the authors' re-associated step
  :math:`(\eta k)\cdot(d/k)`, equal to :math:`\eta d` in exact arithmetic.
* :func:`relative_l1` -- the authors' average relative L1 difference

  .. math:: D(w^{(1)}, w^{(2)}) = \frac{2}{n}\sum_{i=1}^{n}
            \frac{|w^{(1)}_i - w^{(2)}_i|}{|w^{(1)}_i| + |w^{(2)}_i|},

  with :math:`0/0 := 0`. ``D`` lies in :math:`[0, 2]`: 0 for identical weights, about
  :math:`10^{-7}` for float32 weights one ulp apart, and order one for unrelated ones.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

PyTree = Any


def _is_concrete(x: Any) -> bool:
    return not isinstance(x, jax.core.Tracer)


def ulp(x: Any) -> Any:
    """Spacing of floats at ``x``, in ``x``'s own dtype.

    Works on Python floats (as float64), NumPy arrays and JAX arrays; the result has the
    input's type and dtype. ``ulp(0)`` is the smallest subnormal.

    Raises:
        ValueError: if ``x`` is not a floating-point array, or holds inf or NaN.
    """
    if isinstance(x, float | int) and not isinstance(x, bool):
        x = np.float64(x)
    if isinstance(x, jax.Array):
        if not jnp.issubdtype(x.dtype, jnp.floating):
            raise ValueError(f"x must be a floating-point array, got dtype {x.dtype}")
        if _is_concrete(x) and not bool(jnp.all(jnp.isfinite(x))):
            raise ValueError("x must be finite: ulp is undefined for inf and NaN")
        a = jnp.abs(x)
        return jnp.nextafter(a, jnp.asarray(jnp.inf, x.dtype)) - a
    arr = np.asarray(x)
    if not np.issubdtype(arr.dtype, np.floating):
        raise ValueError(f"x must be a floating-point array, got dtype {arr.dtype}")
    if not np.all(np.isfinite(arr)):
        raise ValueError("x must be finite: ulp is undefined for inf and NaN")
    out = np.spacing(np.abs(arr))
    return out.astype(arr.dtype) if isinstance(x, np.ndarray) else arr.dtype.type(out)


def machine_epsilon(dtype: Any) -> float:
    """Machine epsilon of a float dtype: ``ulp(1)``, e.g. 2**-23 for float32."""
    return float(np.finfo(np.dtype(dtype)).eps)


def ieee_divide(d: jax.Array, k: Any) -> jax.Array:
    """``d / k`` rounded correctly, entry by entry, as IEEE-754 (and PyTorch) divide.

    XLA's algebraic simplifier rewrites a division by a broadcast scalar, ``d / k``, into
    ``d * (1/k)``, which rounds twice and differs from true division in a large fraction
    of entries (a third of them for ``k = 3`` in float32). An optimisation barrier around
    the materialised divisor keeps the division a true division. ``k`` may be traced.
    """
    divisor = jax.lax.optimization_barrier(jnp.full(jnp.shape(d), k, jnp.result_type(d)))
    return d / divisor


def perturbed_product(
    d: Any, learning_rate: float, k: int, *, exact_division: bool = True
) -> jax.Array:
    r"""Return :math:`(\eta k)\cdot(d/k)`, rounded as the authors' optimizer rounds it.

    ``learning_rate * k`` is formed in Python (double) and rounded once to ``d``'s dtype,
    as PyTorch does with a scalar ``alpha``; ``d / k`` is a correctly rounded division
    (see :func:`ieee_divide`). With ``exact_division=False`` the division is left to XLA,
    which turns it into a multiplication by ``1/k``: the book uses this to show that a
    compiler can change which bits move. With ``k = 1`` the result is bit-identical to
    ``learning_rate * d`` either way.
    """
    d = jnp.asarray(d)
    step = jnp.asarray(float(learning_rate) * k, d.dtype)
    quotient = ieee_divide(d, k) if exact_division else d / jnp.asarray(k, d.dtype)
    return step * quotient


def differing_fraction(a: Any, b: Any) -> float:
    """Fraction of entries where two same-shape arrays are not bit-for-bit equal."""
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape:
        raise ValueError(f"a and b must have the same shape, got {a.shape} and {b.shape}")
    return float(np.mean(a != b)) if a.size else 0.0


def relative_l1(a: PyTree, b: PyTree) -> jax.Array:
    """The divergence measure ``D`` between two arrays or two pytrees of arrays.

    Entries of all leaves are pooled, so a pytree is treated as one long weight vector.
    Entries where both values are zero contribute 0. Jittable.

    Raises:
        ValueError: if the two pytrees differ in structure or in a leaf's shape, or are empty.
    """
    leaves_a, tree_a = jax.tree_util.tree_flatten(a)
    leaves_b, tree_b = jax.tree_util.tree_flatten(b)
    if tree_a != tree_b:
        raise ValueError(f"a and b must have the same pytree structure, got {tree_a} and {tree_b}")
    total = jnp.zeros((), jnp.float32)
    count = 0
    for la, lb in zip(leaves_a, leaves_b, strict=True):
        la, lb = jnp.asarray(la), jnp.asarray(lb)
        if la.shape != lb.shape:
            raise ValueError(f"leaf shapes differ: {la.shape} and {lb.shape}")
        num = jnp.abs(la - lb)
        den = jnp.abs(la) + jnp.abs(lb)
        ratio = jnp.where(den > 0, num / jnp.where(den > 0, den, 1), 0)
        total = total + jnp.sum(ratio, dtype=jnp.float32)
        count += la.size
    if count == 0:
        raise ValueError("a and b hold no entries")
    return 2.0 * total / count


def round_mantissa(x: Any, bits: int) -> np.ndarray:
    """Round float32 values to ``bits`` explicit mantissa bits (round to nearest, ties to even).

    Emulates the input rounding of reduced-precision matrix units on a CPU: ``bits=10`` is
    NVIDIA's TF32, ``bits=7`` is bfloat16, ``bits=23`` returns the input unchanged. The
    exponent range stays that of float32.

    Raises:
        ValueError: if ``bits`` is outside 1..23 or ``x`` holds inf or NaN.
    """
    if not 1 <= bits <= 23:
        raise ValueError(f"bits must lie in 1..23, got {bits}")
    arr = np.asarray(x, dtype=np.float32)
    if not np.all(np.isfinite(arr)):
        raise ValueError("x must be finite")
    if bits == 23:
        return arr.copy()
    shift = np.uint32(23 - bits)
    u = arr.view(np.uint32)
    lsb = (u >> shift) & np.uint32(1)
    bias = (np.uint32(1) << (shift - np.uint32(1))) - np.uint32(1) + lsb
    mask = ~((np.uint32(1) << shift) - np.uint32(1))
    return ((u + bias) & mask).view(np.float32)


def reduced_precision_matmul(a: Any, b: Any, bits: int) -> np.ndarray:
    """``a @ b`` with inputs rounded to ``bits`` mantissa bits and float32 accumulation.

    This is how TF32 (``bits=10``) tensor cores multiply float32 matrices when JAX's default
    matmul precision is in force on Ampere and Hopper GPUs.
    """
    return round_mantissa(a, bits) @ round_mantissa(b, bits)


def sequential_sum(values: Any) -> np.floating:
    """Left-to-right sum, rounding after every addition in the values' own dtype."""
    arr = np.asarray(values)
    if arr.ndim != 1 or arr.size == 0:
        raise ValueError(f"values must be a non-empty 1-D array, got shape {arr.shape}")
    return np.cumsum(arr, dtype=arr.dtype)[-1]
