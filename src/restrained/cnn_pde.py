r"""The paper's one-layer CNN, its gradient-descent PDE and the three linearisations.

**The model** (Sun et al., NeurIPS 2022 Sec. 5; the authors' ``single_layer/PySun.py``).
A single-channel image :math:`I` of shape ``(H, W)``, a kernel :math:`K` of shape
``(k, k)``, and the :math:`N = (H-k+1)(W-k+1)` positions of a *valid* cross-correlation

.. math:: u(x) = (K * I)(x) = \sum_{y} K(y)\, I(x + y),
          \qquad p_x = I(x + \cdot) \in \mathbb{R}^{k\times k}\ \text{(the patch at } x),

followed by Swish :math:`\varphi(u) = u\,\sigma(\beta u)`, global pooling
:math:`z = c\sum_x \varphi(u(x))` and a sigmoid with binary cross-entropy for label
:math:`y\in\{0,1\}`, plus L2 weight decay :math:`\alpha`:

.. math:: E(K) = -y\log\sigma(z) - (1-y)\log(1-\sigma(z)) + \tfrac{\alpha}{2}\|K\|^2 .

``pooling="mean"`` (:math:`c = 1/N`, the authors' average pooling) is the default for the
model. Its gradient, derived by hand in chapter 4 and implemented in :func:`loss_gradient`, is

.. math:: \nabla_K E = (\sigma(z) - y)\, c \sum_x \varphi'(u(x))\, p_x + \alpha K,
          \qquad \varphi'(u) = \sigma(\beta u) + \beta u\,\sigma(\beta u)(1 - \sigma(\beta u)).

Gradient descent with learning rate :math:`\Delta t` is forward Euler for the PDE
:math:`\partial_t K = -\nabla_K E(K)` in the kernel's spatial coordinate :math:`y`.

**The three linearisations** (NeurIPS Table 3), each written as
:math:`\partial_t K = -A K + f` (:class:`LinearisedPDE`):

* *not activated* (:math:`u \ll 0`, so :math:`\varphi \approx 0`): :math:`A = \alpha\,\mathrm{Id}`;
* *activated* (:math:`u \gg 0`, so :math:`\varphi(u) \approx u`), with :math:`\sigma(z)`
  linearised at :math:`z = 0`: :math:`A = \alpha\,\mathrm{Id} + \tfrac14 c^2 S S^\top`,
  :math:`f = -(\tfrac12 - y)\,c\,S`, where :math:`S = \sum_x p_x`;
* *transitioning* (:math:`u \approx 0`, :math:`\varphi'(u) \approx \tfrac12(1+\beta u)`,
  :math:`\sigma(z) - y` frozen at the constant :math:`a`):
  :math:`A = \alpha\,\mathrm{Id} + \tfrac{a\beta}{2}\, c\, M`, :math:`f = -\tfrac{a}{2} c S`,

with the **patch-Gram operator** :math:`M = \sum_x p_x p_x^\top` (:func:`patch_gram`),
:math:`M K = \sum_x u(x)\, p_x = (K * I) * I`. Under a periodic idealisation its Fourier
symbol is :math:`|\hat I(\omega)|^2`.

**Normalisation.** The authors' Figure-3 script ``single_layer/linear.py`` iterates the
transitioning PDE with the *unnormalised* sum :math:`c = 1` in the data term (and the global
image mean as the forcing, which is zero for their checkerboard). The functions that
describe linearisations therefore take ``pooling="sum"`` by default, the model functions
``pooling="mean"``; both accept either. With ``pooling="sum"``, the 256x256 checkerboard
and a 32x32 kernel give :math:`\alpha_{\min} = 1.296\times10^{7}` and, at
:math:`\Delta t = 10^{-8}`, :math:`\alpha_{\max} = 2\times10^{8}`.

**Stability.** Forward Euler multiplies the eigen-component of :math:`K - A^{-1}f` along an
eigenvector of :math:`A` with eigenvalue :math:`\lambda` by :math:`1 - \Delta t\lambda`; the
iteration is bounded iff :math:`0 \le \Delta t\,\lambda \le 2` for every :math:`\lambda`
(strictly inside: decay; on an edge: neutral). For the transitioning operator this is the
window :math:`\alpha_{\min} \le \alpha \le \alpha_{\max}(\Delta t)` of :func:`stability_window`.

Public functions: :func:`checkerboard`, :func:`correlate_valid`, :func:`forward`,
:func:`loss`, :func:`loss_gradient`, :func:`patch_gram`, :func:`patch_sum`,
:func:`not_activated_operator`, :func:`activated_operator`,
:func:`transitioning_operator`, :func:`stability_window`, :func:`spectral_bounds`,
:func:`windowed_symbol`, :func:`iterate_linearised`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

Pooling = Literal["mean", "sum"]


def _check_pooling(pooling: str) -> None:
    if pooling not in ("mean", "sum"):
        raise ValueError(f"pooling must be 'mean' or 'sum', got {pooling!r}")


def _check_image(image: np.ndarray | jax.Array, kernel_size: int) -> None:
    if np.ndim(image) != 2:
        raise ValueError(f"image must be a 2-D array (H, W), got shape {np.shape(image)}")
    if not isinstance(kernel_size, int | np.integer) or kernel_size < 1:
        raise ValueError(f"kernel_size must be a positive integer, got {kernel_size!r}")
    h, w = np.shape(image)
    if kernel_size > min(h, w):
        raise ValueError(f"kernel_size must lie in [1, {min(h, w)}] for an image of shape {(h, w)}")


def _check_kernel(kernel: np.ndarray | jax.Array, image: np.ndarray | jax.Array) -> int:
    if np.ndim(kernel) != 2 or np.shape(kernel)[0] != np.shape(kernel)[1]:
        raise ValueError(f"kernel must be a square 2-D array (k, k), got shape {np.shape(kernel)}")
    k = int(np.shape(kernel)[0])
    _check_image(image, k)
    return k


def _check_positive(name: str, value: float) -> None:
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")


def _check_label(label: float) -> None:
    if not 0.0 <= float(label) <= 1.0:
        raise ValueError(f"label must lie in [0, 1], got {label!r}")


def checkerboard(size: int) -> np.ndarray:
    """The authors' ``size x size`` checkerboard: -1 where ``m + n`` is even, +1 elsewhere."""
    if not isinstance(size, int | np.integer) or size < 1:
        raise ValueError(f"size must be a positive integer, got {size!r}")
    m, n = np.indices((size, size))
    return np.where((m + n) % 2 == 0, -1.0, 1.0)


def correlate_valid(image: jax.Array, kernel: jax.Array) -> jax.Array:
    r"""Valid cross-correlation :math:`(K * I)(x) = \sum_y K(y) I(x+y)`, shape ``(H-k+1, W-k+1)``.

    With ``image`` and ``kernel`` swapped in role (a large "kernel" ``g`` of shape
    ``(H-k+1, W-k+1)``), the same call computes :math:`\sum_x g(x)\, I(x + y)`, the adjoint
    map from positions back to kernel coordinates used by the gradient.
    """
    image, kernel = jnp.asarray(image), jnp.asarray(kernel)
    dtype = jnp.result_type(image, kernel)
    out = jax.lax.conv_general_dilated(
        image.astype(dtype)[None, None],
        kernel.astype(dtype)[None, None],
        window_strides=(1, 1),
        padding="VALID",
        precision=jax.lax.Precision.HIGHEST,
    )
    return out[0, 0]


def _scale(n_positions: int, pooling: Pooling) -> float:
    return 1.0 / n_positions if pooling == "mean" else 1.0


def swish(u: jax.Array, beta: float = 1.0) -> jax.Array:
    r"""Swish :math:`\varphi(u) = u\,\sigma(\beta u)`."""
    return u * jax.nn.sigmoid(beta * u)


def swish_derivative(u: jax.Array, beta: float = 1.0) -> jax.Array:
    r""":math:`\varphi'(u) = \sigma(\beta u) + \beta u\,\sigma(\beta u)\,(1-\sigma(\beta u))`."""
    s = jax.nn.sigmoid(beta * u)
    return s + beta * u * s * (1.0 - s)


def forward(
    kernel: jax.Array, image: jax.Array, beta: float = 1.0, pooling: Pooling = "mean"
) -> jax.Array:
    r"""The pooled logit :math:`z = c\sum_x \varphi((K*I)(x))` (a scalar)."""
    _check_kernel(kernel, image)
    _check_pooling(pooling)
    u = correlate_valid(image, kernel)
    return _scale(u.size, pooling) * jnp.sum(swish(u, beta))


def loss(
    kernel: jax.Array,
    image: jax.Array,
    label: float = 1.0,
    beta: float = 1.0,
    weight_decay: float = 0.0,
    pooling: Pooling = "mean",
) -> jax.Array:
    r"""Total loss :math:`E(K)`: cross-entropy of :math:`\sigma(z)` plus :math:`\alpha\|K\|^2/2`.

    The cross-entropy is evaluated as :math:`\operatorname{softplus}(z) - yz`, which equals
    :math:`-y\log\sigma(z)-(1-y)\log(1-\sigma(z))` without overflow for large :math:`|z|`.
    """
    _check_label(label)
    z = forward(kernel, image, beta, pooling)
    bce = jax.nn.softplus(z) - label * z
    return bce + 0.5 * weight_decay * jnp.sum(jnp.asarray(kernel) ** 2)


def loss_gradient(
    kernel: jax.Array,
    image: jax.Array,
    label: float = 1.0,
    beta: float = 1.0,
    weight_decay: float = 0.0,
    pooling: Pooling = "mean",
) -> jax.Array:
    r"""Hand-derived :math:`\nabla_K E = (\sigma(z)-y)\,c\sum_x\varphi'(u(x))\,p_x + \alpha K`.

    The sum over positions is one valid correlation of the image with the map
    :math:`\varphi'(u)`, so the cost is that of a second forward pass.
    """
    _check_label(label)
    _check_kernel(kernel, image)
    _check_pooling(pooling)
    kernel = jnp.asarray(kernel)
    u = correlate_valid(image, kernel)
    c = _scale(u.size, pooling)
    z = c * jnp.sum(swish(u, beta))
    data_term = correlate_valid(image, swish_derivative(u, beta))
    return (jax.nn.sigmoid(z) - label) * c * data_term + weight_decay * kernel


def _patches(image: np.ndarray, kernel_size: int) -> np.ndarray:
    """All valid patches as a read-only view of shape ``(H-k+1, W-k+1, k, k)``."""
    return sliding_window_view(np.asarray(image), (kernel_size, kernel_size))


def patch_gram(image: np.ndarray, kernel_size: int, dtype: np.dtype = np.float64) -> np.ndarray:
    r"""The patch-Gram operator :math:`M = \sum_x p_x p_x^\top`, a ``(k*k, k*k)`` matrix.

    Kernel entries are flattened row-major, as ``kernel.reshape(-1)``. ``M`` is the
    unnormalised sum (multiply by :math:`1/N` for average pooling) and is positive
    semi-definite; :math:`M\,\mathrm{vec}(K) = \mathrm{vec}\big(\sum_x (K*I)(x)\,p_x\big)`.
    Cost :math:`N k^4` multiply-adds, done in row blocks to bound memory.
    """
    _check_image(image, kernel_size)
    windows = _patches(np.asarray(image, dtype=dtype), kernel_size)
    k2 = kernel_size * kernel_size
    gram = np.zeros((k2, k2), dtype=dtype)
    rows_per_block = max(1, 4_000_000 // (windows.shape[1] * k2))
    for start in range(0, windows.shape[0], rows_per_block):
        block = np.ascontiguousarray(windows[start : start + rows_per_block]).reshape(-1, k2)
        gram += block.T @ block
    return gram


def patch_sum(image: np.ndarray, kernel_size: int) -> np.ndarray:
    r""":math:`S = \sum_x p_x`, a ``(k, k)`` array (``S / N`` is the local mean image)."""
    _check_image(image, kernel_size)
    return _patches(np.asarray(image, dtype=np.float64), kernel_size).sum(axis=(0, 1))


def n_positions(image: np.ndarray, kernel_size: int) -> int:
    """Number of valid positions ``N = (H-k+1)(W-k+1)``."""
    _check_image(image, kernel_size)
    h, w = np.shape(image)
    return (h - kernel_size + 1) * (w - kernel_size + 1)


@dataclass(frozen=True)
class LinearisedPDE:
    r"""A linear PDE :math:`\partial_t K = -A\,\mathrm{vec}(K) + f` in one region of kernel space.

    :math:`A = B + \alpha\,\mathrm{Id}`: ``data_matrix`` is the symmetric ``(k*k, k*k)``
    data part :math:`B`, ``weight_decay`` is :math:`\alpha`, ``forcing`` the ``(k*k,)``
    vector :math:`f`, ``region`` one of ``"not activated"``, ``"activated"``,
    ``"transitioning"``.
    """

    region: str
    data_matrix: np.ndarray
    weight_decay: float
    forcing: np.ndarray

    @property
    def kernel_size(self) -> int:
        return math.isqrt(self.data_matrix.shape[0])

    @property
    def matrix(self) -> np.ndarray:
        r"""The full operator :math:`A = B + \alpha\,\mathrm{Id}`."""
        return self.data_matrix + self.weight_decay * np.eye(self.data_matrix.shape[0])

    def with_weight_decay(self, weight_decay: float) -> LinearisedPDE:
        """The same region and data with another :math:`\alpha`."""
        return LinearisedPDE(self.region, self.data_matrix, float(weight_decay), self.forcing)

    def eigenvalues(self) -> np.ndarray:
        """Eigenvalues of :math:`A`, ascending."""
        return np.linalg.eigvalsh(self.data_matrix) + self.weight_decay

    def amplification(self, lr: float) -> np.ndarray:
        r"""Forward-Euler factors :math:`1 - \Delta t\,\lambda_i`, one per eigenvalue."""
        _check_positive("lr", lr)
        return 1.0 - lr * self.eigenvalues()

    def spectral_radius(self, lr: float) -> float:
        r"""Largest :math:`|1 - \Delta t\,\lambda_i|`: the asymptotic growth factor per step."""
        return float(np.max(np.abs(self.amplification(lr))))

    def is_stable(self, lr: float) -> bool:
        r"""True iff :math:`0 \le \Delta t\,\lambda_i \le 2` for every eigenvalue (bounded)."""
        _check_positive("lr", lr)
        scaled = lr * self.eigenvalues()
        tol = 1e-12 * max(1.0, float(np.max(np.abs(scaled))))
        return bool(np.all(scaled >= -tol) and np.all(scaled <= 2.0 + tol))

    def velocity(self, kernel: np.ndarray) -> np.ndarray:
        r"""Right-hand side :math:`-A\,\mathrm{vec}(K) + f`, reshaped like ``kernel``."""
        flat = np.asarray(kernel).reshape(-1)
        return (-self.matrix @ flat + self.forcing).reshape(np.shape(kernel))


def not_activated_operator(kernel_size: int, weight_decay: float) -> LinearisedPDE:
    r"""Region :math:`u \ll 0`: :math:`\partial_t K = -\alpha K`.

    Stable iff :math:`0 \le \alpha\Delta t \le 2`.
    """
    if not isinstance(kernel_size, int | np.integer) or kernel_size < 1:
        raise ValueError(f"kernel_size must be a positive integer, got {kernel_size!r}")
    k2 = kernel_size * kernel_size
    return LinearisedPDE("not activated", np.zeros((k2, k2)), float(weight_decay), np.zeros(k2))


def activated_operator(
    image: np.ndarray,
    kernel_size: int,
    weight_decay: float,
    label: float = 1.0,
    pooling: Pooling = "sum",
) -> LinearisedPDE:
    r"""Region :math:`u \gg 0`: :math:`A = \alpha + \frac14 c^2 SS^\top`, :math:`f=-(\frac12-y)cS`.

    Here :math:`\varphi(u)\approx u`, so :math:`z \approx c\langle S, K\rangle`, and
    :math:`\sigma(z)\approx\frac12+\frac z4`. The single non-trivial eigenvalue is
    :math:`\alpha + \frac14 c^2\|S\|^2`, so the region is stable iff
    :math:`0 \le \alpha` and :math:`\alpha + \frac14 c^2\|S\|^2 \le 2/\Delta t`.
    """
    _check_label(label)
    _check_pooling(pooling)
    c = _scale(n_positions(image, kernel_size), pooling)
    s = patch_sum(image, kernel_size).reshape(-1)
    data = 0.25 * c * c * np.outer(s, s)
    return LinearisedPDE("activated", data, float(weight_decay), -(0.5 - label) * c * s)


def transitioning_operator(
    image: np.ndarray,
    kernel_size: int,
    weight_decay: float,
    beta: float = 1.0,
    a: float = -0.5,
    pooling: Pooling = "sum",
    gram: np.ndarray | None = None,
) -> LinearisedPDE:
    r"""Region :math:`u \approx 0`: :math:`A = \alpha + \frac{a\beta}2 cM`, :math:`f=-\frac a2 cS`.

    ``a`` is the frozen value of :math:`\sigma(z) - y` (:math:`-\frac12` for label 1 near
    :math:`z = 0`, the authors' ``sigmoid_eta``). Pass a precomputed ``gram`` (from
    :func:`patch_gram`) to avoid recomputing :math:`M`.
    """
    _check_pooling(pooling)
    _check_positive("beta", beta)
    c = _scale(n_positions(image, kernel_size), pooling)
    m = patch_gram(image, kernel_size) if gram is None else np.asarray(gram, dtype=np.float64)
    k2 = kernel_size * kernel_size
    if m.shape != (k2, k2):
        raise ValueError(f"gram must have shape {(k2, k2)}, got {m.shape}")
    s = patch_sum(image, kernel_size).reshape(-1)
    data = 0.5 * a * beta * c * m
    return LinearisedPDE("transitioning", data, float(weight_decay), -0.5 * a * c * s)


def stability_window(
    image: np.ndarray,
    kernel_size: int,
    lr: float,
    beta: float = 1.0,
    a: float = -0.5,
    pooling: Pooling = "sum",
    gram: np.ndarray | None = None,
) -> tuple[float, float]:
    r"""Weight decays :math:`(\alpha_{\min}, \alpha_{\max})` keeping the transitioning PDE stable.

    With :math:`\nu_i` the eigenvalues of :math:`\frac{a\beta}{2}cM`, forward Euler is bounded
    iff :math:`0 \le \alpha + \nu_i \le 2/\Delta t` for all :math:`i`, i.e.

    .. math:: \alpha_{\min} = -\min_i \nu_i, \qquad \alpha_{\max} = 2/\Delta t - \max_i \nu_i.

    For :math:`a < 0` this is :math:`\alpha_{\min} = \frac{|a|\beta}{2}c\,\mu_{\max}(M)` and
    :math:`\alpha_{\max} = \frac2{\Delta t} + \frac{|a|\beta}{2}c\,\mu_{\min}(M)`. The window is
    empty when :math:`\alpha_{\min} > \alpha_{\max}`, i.e. for learning rates too large for
    any weight decay. Default normalisation: the authors' ``linear.py`` (``pooling="sum"``).
    """
    _check_positive("lr", lr)
    _check_positive("beta", beta)
    _check_pooling(pooling)
    c = _scale(n_positions(image, kernel_size), pooling)
    m = patch_gram(image, kernel_size) if gram is None else np.asarray(gram, dtype=np.float64)
    mu = np.linalg.eigvalsh(m)
    mu = np.clip(mu, 0.0, None)  # M is PSD: negative values are rounding noise
    nu = 0.5 * a * beta * c * np.array([mu[0], mu[-1]])
    return float(-nu.min()), float(2.0 / lr - nu.max())


def spectral_bounds(
    image: np.ndarray, kernel_size: int, gram: np.ndarray | None = None
) -> tuple[float, float]:
    r"""Fourier sandwich for :math:`\mu_{\max}(M)`: ``(max_w rho_k(w), max_w |I^(w)|^2)``.

    Lower bound: the largest :func:`windowed_symbol` (a Rayleigh quotient of :math:`M` at a
    plane wave restricted to the kernel support). Upper bound: the periodic symbol
    :math:`\max_\omega|\hat I(\omega)|^2` of the full image (Parseval). The upper bound is the
    value ``linear.py`` prints (times :math:`\frac14`) as its "theoretical alpha_min".
    """
    _check_image(image, kernel_size)
    lower = float(windowed_symbol(image, kernel_size, gram=gram).max())
    upper = float(np.max(np.abs(np.fft.fft2(np.asarray(image, dtype=np.float64))) ** 2))
    return lower, upper


def windowed_symbol(
    image: np.ndarray, kernel_size: int, oversample: int = 2, gram: np.ndarray | None = None
) -> np.ndarray:
    r"""The symbol of :math:`M` seen by a ``k x k`` kernel, on a frequency grid.

    .. math:: \rho_k(\omega) = \frac{e_\omega^{*} M e_\omega}{e_\omega^{*}e_\omega}
              = \frac{1}{k^2}\sum_x \Big|\sum_{y} e^{-i\omega\cdot y}\, p_x(y)\Big|^2,

    the Rayleigh quotient of :math:`M` at the plane wave :math:`e_\omega(y)=e^{i\omega\cdot y}`
    on the kernel's support: :math:`N` times a Bartlett-averaged periodogram of the image
    with window :math:`k`. It is computed as the Fourier series of the diagonal sums
    :math:`\tilde R(d) = \sum_y M_{y, y+d}`. Returned on an ``(m, m)`` grid,
    ``m = oversample * k`` (``oversample >= 2`` avoids aliasing), frequencies
    ``2*pi*j/m`` with the zero frequency at index 0 (``numpy.fft`` order).
    """
    _check_image(image, kernel_size)
    if not isinstance(oversample, int | np.integer) or oversample < 2:
        raise ValueError(f"oversample must be an integer >= 2, got {oversample!r}")
    k = kernel_size
    m = patch_gram(image, k) if gram is None else np.asarray(gram, dtype=np.float64)
    if m.shape != (k * k, k * k):
        raise ValueError(f"gram must have shape {(k * k, k * k)}, got {m.shape}")
    y1, y2, z1, z2 = np.indices((k, k, k, k)).reshape(4, -1)
    size = oversample * k
    diagonal_sums = np.zeros((size, size))
    np.add.at(diagonal_sums, ((z1 - y1) % size, (z2 - y2) % size), m.reshape(-1))
    return np.real(np.fft.fft2(diagonal_sums)) / k**2


class Trajectory(NamedTuple):
    r"""A forward-Euler run: ``norms[n]`` is :math:`\|K_n\|`, ``increments[n]`` is the step.

    The step is :math:`\|K_{n+1}-K_n\|`.

    The increments do not see the fixed point :math:`A^{-1}f`, so their per-step ratio
    tends to the spectral radius :math:`\max_i|1-\Delta t\lambda_i|` (see
    :meth:`growth_rate`).
    """

    norms: np.ndarray
    increments: np.ndarray

    def growth_rate(self, window: int = 100) -> np.ndarray | float:
        """Geometric mean per-step ratio of the increments over the last ``window`` steps."""
        inc = self.increments
        if window < 1 or window >= inc.shape[0]:
            raise ValueError(f"window must lie in [1, {inc.shape[0] - 1}], got {window}")
        with np.errstate(divide="ignore", invalid="ignore"):
            return (inc[-1] / inc[-1 - window]) ** (1.0 / window)


def iterate_linearised(
    pde: LinearisedPDE,
    kernel0: np.ndarray,
    lr: float | np.ndarray,
    steps: int,
    weight_decay: float | np.ndarray | None = None,
) -> Trajectory:
    r"""Forward Euler :math:`K_{n+1} = K_n + \Delta t\,(-A K_n + f)` for ``steps`` steps.

    ``kernel0`` has shape ``(k, k)``. ``lr`` and ``weight_decay`` (default: the PDE's own
    :math:`\alpha`) may be scalars or 1-D arrays, broadcast together: each entry is one run,
    all runs advance together (one matrix product per step). Returns a :class:`Trajectory`
    whose arrays have shape ``(steps + 1,)`` (norms) and ``(steps,)`` (increments) for
    scalars, else one more trailing axis over runs. A run whose iterate stops being finite
    is frozen and reports ``inf`` from then on (a diverging run is a result, not a crash).
    """
    if not isinstance(steps, int | np.integer) or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    wd = pde.weight_decay if weight_decay is None else weight_decay
    scalar = np.ndim(lr) == 0 and np.ndim(wd) == 0
    lrs, wds = np.broadcast_arrays(
        np.atleast_1d(np.asarray(lr, dtype=np.float64)),
        np.atleast_1d(np.asarray(wd, dtype=np.float64)),
    )
    if lrs.ndim != 1 or not np.all(np.isfinite(lrs) & (lrs > 0)):
        raise ValueError(f"lr must be a positive scalar or a 1-D array of them, got {lr!r}")
    if not np.all(np.isfinite(wds)):
        raise ValueError(f"weight_decay must be finite, got {wd!r}")
    k = pde.kernel_size
    if np.shape(kernel0) != (k, k):
        raise ValueError(f"kernel0 must have shape {(k, k)}, got {np.shape(kernel0)}")
    state = np.repeat(np.asarray(kernel0, dtype=np.float64).reshape(-1, 1), lrs.size, axis=1)
    norms = np.full((steps + 1, lrs.size), np.inf)
    increments = np.full((steps, lrs.size), np.inf)
    norms[0] = np.linalg.norm(state, axis=0)
    alive = np.isfinite(norms[0])
    with np.errstate(over="ignore", invalid="ignore"):
        for n in range(steps):
            step = lrs * (pde.forcing[:, None] - pde.data_matrix @ state - wds * state)
            state = state + step
            current, moved = np.linalg.norm(state, axis=0), np.linalg.norm(step, axis=0)
            alive &= np.isfinite(current) & np.isfinite(moved)
            norms[n + 1] = np.where(alive, current, np.inf)
            increments[n] = np.where(alive, moved, np.inf)
            state[:, ~alive] = 0.0
            if not alive.any():
                break
    if scalar:
        return Trajectory(norms[:, 0], increments[:, 0])
    return Trajectory(norms, increments)
