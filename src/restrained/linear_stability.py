r"""Gradient descent on a quadratic: stability thresholds, runs, and measured stable steps.

The model problem of chapter 3 is the quadratic loss

.. math:: L_\alpha(\theta) = \tfrac12\operatorname{tr}(\theta^\top H\theta)
          - \operatorname{tr}(b^\top\theta) + c + \tfrac{\alpha}{2}\lVert\theta\rVert^2,
          \qquad \nabla L_\alpha(\theta) = (H + \alpha I)\theta - b,

with :math:`H` symmetric (:math:`\theta` may be a matrix: one column per output). Least
squares :math:`\frac{1}{2n}\lVert X\theta - Y\rVert^2` is the case :math:`H = X^\top X/n`,
:math:`b = X^\top Y/n`, :math:`c = \lVert Y\rVert^2/(2n)`.

Gradient descent with step :math:`\eta` is forward Euler for the gradient flow
:math:`\dot\theta = -\nabla L_\alpha(\theta)`; on the eigenvector of :math:`H` with
eigenvalue :math:`\lambda` it multiplies the error by :math:`1 - \eta(\lambda+\alpha)`.
With momentum :math:`\mu` (PyTorch's convention, as in the authors' optimizer) the error on
that eigenvector obeys a two-term recursion with characteristic polynomial, in
:math:`x = \eta(\lambda + \alpha)`,

.. math:: z^2 - (1 + \mu - x)\,z + \mu \quad\text{(heavy ball)},\qquad
          z^2 - (1+\mu)(1-x)\,z + \mu(1-x) \quad\text{(Nesterov)}.

Its roots lie in the closed unit disc iff :math:`0 \le x \le 2+2\mu` (heavy ball) or
:math:`0 \le x \le (2+2\mu)/(1+2\mu)` (Nesterov), hence the thresholds

.. math:: \eta_{\rm GD} = \frac{2}{\lambda_{\max}+\alpha},\qquad
          \eta_{\rm HB} = \frac{2+2\mu}{\lambda_{\max}+\alpha},\qquad
          \eta_{\rm NAG} = \frac{2+2\mu}{(1+2\mu)(\lambda_{\max}+\alpha)}.

Runs use :func:`restrained.optim.perturbed_sgd` (with ``k = 1``), so the measured
thresholds are those of the book's actual optimizer.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from restrained.optim import perturbed_sgd


def _finite(name: str, value: float) -> float:
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    return value


def _positive(name: str, value: float) -> float:
    value = _finite(name, value)
    if value <= 0:
        raise ValueError(f"{name} must be > 0, got {value!r}")
    return value


def _momentum(momentum: float, nesterov: bool) -> float:
    momentum = _finite("momentum", momentum)
    if not 0.0 <= momentum < 1.0:
        raise ValueError(f"momentum must lie in [0, 1), got {momentum!r}")
    if nesterov and momentum == 0.0:
        raise ValueError("nesterov=True needs momentum in (0, 1), got momentum=0")
    return momentum


def _steps(steps: int) -> int:
    if isinstance(steps, bool) or int(steps) != steps or steps < 1:
        raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
    return int(steps)


def stability_limit(momentum: float = 0.0, nesterov: bool = False) -> float:
    r"""Largest stable :math:`x = \eta(\lambda+\alpha)`.

    It is 2 for gradient descent, :math:`2+2\mu` with heavy-ball momentum and
    :math:`(2+2\mu)/(1+2\mu)` with Nesterov momentum.
    """
    mu = _momentum(momentum, nesterov)
    if nesterov:
        return (2 + 2 * mu) / (1 + 2 * mu)
    return 2 + 2 * mu


def threshold(
    lam_max: float, alpha: float = 0.0, momentum: float = 0.0, nesterov: bool = False
) -> float:
    r"""Largest stable learning rate :math:`\eta^* = x^*/(\lambda_{\max} + \alpha)` for a curvature
    :math:`\lambda_{\max}` (the top Hessian eigenvalue) and weight decay :math:`\alpha`."""
    lam_max, alpha = _finite("lam_max", lam_max), _finite("alpha", alpha)
    if lam_max + alpha <= 0:
        raise ValueError(
            f"lam_max + alpha must be > 0 for a finite threshold, got {lam_max!r} + {alpha!r}"
        )
    return stability_limit(momentum, nesterov) / (lam_max + alpha)


def mode_radius(x: np.ndarray | float, momentum: float = 0.0, nesterov: bool = False) -> np.ndarray:
    r"""Spectral radius of one step on a mode with :math:`x = \eta(\lambda+\alpha)`, any real ``x``.

    Without momentum it is :math:`|1 - x|`; with momentum, the larger root modulus of the
    characteristic polynomial in the module docstring. Values above 1 mean the mode grows.
    """
    mu = _momentum(momentum, nesterov)
    x = np.asarray(x, np.float64)
    if not np.all(np.isfinite(x)):
        raise ValueError("x must be finite")
    if mu == 0.0:
        return np.abs(1.0 - x)
    if nesterov:
        p, q = -(1 + mu) * (1 - x), mu * (1 - x)
    else:
        p, q = -(1 + mu - x), np.full_like(x, mu)
    disc = (p * p - 4 * q).astype(np.complex128)
    roots = np.stack([(-p + np.sqrt(disc)) / 2, (-p - np.sqrt(disc)) / 2])
    return np.max(np.abs(roots), axis=0)


@dataclass(frozen=True)
class Quadratic:
    r"""The loss :math:`\tfrac12\operatorname{tr}(\theta^\top H\theta)
    - \operatorname{tr}(b^\top\theta) + c`; weight decay is added by :func:`run`."""

    hessian: np.ndarray
    b: np.ndarray
    c: float = 0.0

    def __post_init__(self) -> None:
        h, b = np.asarray(self.hessian), np.asarray(self.b)
        if h.ndim != 2 or h.shape[0] != h.shape[1] or h.shape[0] == 0:
            raise ValueError(f"hessian must be a non-empty square matrix, got shape {h.shape}")
        if not np.allclose(h, h.T, rtol=1e-6, atol=1e-7 * max(1.0, float(np.abs(h).max()))):
            raise ValueError("hessian must be symmetric")
        if b.shape[0] != h.shape[0] or b.ndim not in (1, 2):
            raise ValueError(
                f"b must have shape ({h.shape[0]},) or ({h.shape[0]}, m), got {b.shape}"
            )
        if not (np.all(np.isfinite(h)) and np.all(np.isfinite(b)) and math.isfinite(self.c)):
            raise ValueError("hessian, b and c must be finite")

    @classmethod
    def least_squares(cls, x: np.ndarray, y: np.ndarray) -> Quadratic:
        r"""The quadratic :math:`\frac{1}{2n}\lVert X\theta - Y\rVert^2`, Gram in float64."""
        x64, y64 = np.asarray(x, np.float64), np.asarray(y, np.float64)
        if x64.ndim != 2 or y64.shape[0] != x64.shape[0] or x64.shape[0] == 0:
            raise ValueError(
                f"x must be (n, d) and y (n,) or (n, m), got {x64.shape} and {y64.shape}"
            )
        if not (np.all(np.isfinite(x64)) and np.all(np.isfinite(y64))):
            raise ValueError("x and y must be finite")
        n = x64.shape[0]
        return cls(x64.T @ x64 / n, x64.T @ y64 / n, float(np.sum(y64 * y64) / (2 * n)))

    @property
    def eigenvalues(self) -> np.ndarray:
        """Eigenvalues of the Hessian, ascending (float64)."""
        return np.linalg.eigvalsh(np.asarray(self.hessian, np.float64))

    def loss(self, theta: jax.Array, alpha: float = 0.0) -> jax.Array:
        """The loss plus ``alpha/2 * |theta|^2``, in ``theta``'s dtype."""
        h = jnp.asarray(self.hessian, theta.dtype)
        b = jnp.asarray(self.b, theta.dtype)
        return (
            0.5 * jnp.sum(theta * (h @ theta))
            - jnp.sum(b * theta)
            + self.c
            + 0.5 * alpha * jnp.sum(theta * theta)
        )


@dataclass(frozen=True)
class Run:
    """Iterates ``theta[n]`` and loss (with weight decay) ``loss[n]``, ``n = 0..steps``.

    A run that overflowed is cut at its last finite step; ``diverged_at`` is the first
    non-finite step (a result, not an error).
    """

    theta: np.ndarray
    loss: np.ndarray
    grad_norm: np.ndarray
    diverged_at: int | None


@partial(jax.jit, static_argnames=("steps", "momentum", "nesterov"))
def _run(hessian, b, c, theta0, lr, alpha, steps, momentum, nesterov):
    # Weight decay enters the gradient here rather than through the optimizer's
    # ``weight_decay`` (the same g = grad + alpha * theta), so alpha can stay a traced value.
    tx = perturbed_sgd(lambda count: lr, momentum=momentum, nesterov=nesterov)

    def loss(theta):
        return (
            0.5 * jnp.sum(theta * (hessian @ theta))
            - jnp.sum(b * theta)
            + c
            + 0.5 * alpha * jnp.sum(theta * theta)
        )

    def body(carry, _):
        theta, state = carry
        grad = hessian @ theta - b + alpha * theta
        updates, state = tx.update(grad, state, theta)
        theta = optax.apply_updates(theta, updates)
        return (theta, state), (
            theta,
            loss(theta),
            jnp.linalg.norm(hessian @ theta - b + alpha * theta),
        )

    state = tx.init(theta0)
    g0 = jnp.linalg.norm(hessian @ theta0 - b + alpha * theta0)
    _, (thetas, losses, gnorms) = jax.lax.scan(body, (theta0, state), None, length=steps)
    return (
        jnp.concatenate([theta0[None], thetas]),
        jnp.concatenate([loss(theta0)[None], losses]),
        jnp.concatenate([g0[None], gnorms]),
    )


class _GDArguments(NamedTuple):
    hessian: jax.Array
    b: jax.Array
    theta0: jax.Array
    lr: jax.Array
    alpha: jax.Array
    steps: int
    momentum: float
    nesterov: bool


def _gd_arguments(
    problem: Quadratic,
    theta0: np.ndarray | jax.Array,
    lr: float,
    steps: int,
    alpha: float,
    momentum: float,
    nesterov: bool,
) -> _GDArguments:
    """Check the arguments of :func:`run` and :func:`is_stable` and cast them to float32."""
    lr = _positive("lr", lr)
    alpha = _finite("alpha", alpha)
    if alpha < 0:
        raise ValueError(f"alpha must be >= 0 (weight decay), got {alpha!r}")
    momentum = _momentum(momentum, nesterov)
    steps = _steps(steps)
    theta0 = jnp.asarray(theta0, jnp.float32)
    if theta0.shape != np.shape(problem.b):
        raise ValueError(f"theta0 must have shape {np.shape(problem.b)}, got {theta0.shape}")
    if not bool(jnp.all(jnp.isfinite(theta0))):
        raise ValueError("theta0 must be finite")
    return _GDArguments(
        jnp.asarray(problem.hessian, jnp.float32),
        jnp.asarray(problem.b, jnp.float32),
        theta0,
        jnp.float32(lr),
        jnp.float32(alpha),
        steps,
        momentum,
        bool(nesterov),
    )


def run(
    problem: Quadratic,
    theta0: np.ndarray | jax.Array,
    lr: float,
    steps: int,
    alpha: float = 0.0,
    momentum: float = 0.0,
    nesterov: bool = False,
) -> Run:
    """Full-batch gradient descent (optionally with momentum) on ``problem`` + weight decay.

    Float32 throughout, via :func:`restrained.optim.perturbed_sgd` with ``k = 1``.
    """
    args = _gd_arguments(problem, theta0, lr, steps, alpha, momentum, nesterov)
    thetas, losses, gnorms = _run(
        args.hessian,
        args.b,
        jnp.float32(problem.c),
        args.theta0,
        args.lr,
        args.alpha,
        args.steps,
        args.momentum,
        args.nesterov,
    )
    thetas, losses, gnorms = np.asarray(thetas), np.asarray(losses), np.asarray(gnorms)
    finite = np.isfinite(losses) & np.isfinite(gnorms)
    finite &= np.all(np.isfinite(thetas.reshape(len(thetas), -1)), axis=1)
    diverged_at = None if finite.all() else int(np.argmin(finite))
    if diverged_at is not None:
        thetas, losses, gnorms = thetas[:diverged_at], losses[:diverged_at], gnorms[:diverged_at]
    return Run(thetas, losses, gnorms, diverged_at)


@partial(jax.jit, static_argnames=("steps", "momentum", "nesterov"))
def _end_gradient_norms(hessian, b, theta0, lr, alpha, steps, momentum, nesterov):
    tx = perturbed_sgd(lambda count: lr, momentum=momentum, nesterov=nesterov)

    def body(_, carry):
        theta, state = carry
        updates, state = tx.update(hessian @ theta - b + alpha * theta, state, theta)
        return optax.apply_updates(theta, updates), state

    theta, _ = jax.lax.fori_loop(0, steps, body, (theta0, tx.init(theta0)))
    norm0 = jnp.linalg.norm(hessian @ theta0 - b + alpha * theta0)
    return norm0, jnp.linalg.norm(hessian @ theta - b + alpha * theta)


def is_stable(
    problem: Quadratic,
    theta0: np.ndarray | jax.Array,
    lr: float,
    steps: int,
    alpha: float = 0.0,
    momentum: float = 0.0,
    nesterov: bool = False,
) -> bool:
    """:func:`is_stable_run` of ``run(...)`` without storing the trajectory (for bisection).

    An overflow makes the final gradient norm inf or NaN, which counts as unstable.
    """
    args = _gd_arguments(problem, theta0, lr, steps, alpha, momentum, nesterov)
    norm0, norm_end = _end_gradient_norms(*args)  # the fields are in its argument order
    return bool(jnp.isfinite(norm_end) & (norm_end <= norm0))


def is_stable_run(result: Run) -> bool:
    """A run counts as stable if it stayed finite and its gradient norm did not grow overall.

    On a quadratic the gradient obeys the same linear recursion as the error, so over
    enough steps any mode with a factor above 1 dominates ``grad_norm[-1]``.
    """
    return result.diverged_at is None and bool(result.grad_norm[-1] <= result.grad_norm[0])


def bisect_largest_stable(
    is_stable: Callable[[float], bool],
    lo: float,
    hi: float,
    rtol: float = 1e-4,
    max_iter: int = 100,
) -> float:
    """Largest step ``s`` in ``[lo, hi]`` with ``is_stable(s)``, by bisection, to relative ``rtol``.

    Assumes one switch from stable to unstable. ``is_stable(lo)`` must be True and
    ``is_stable(hi)`` False (a ``ValueError`` otherwise), so the bracket is checked by
    measurement, not assumed. Returns the stable end of the final bracket.
    """
    lo, hi = _positive("lo", lo), _positive("hi", hi)
    rtol = _positive("rtol", rtol)
    if not lo < hi:
        raise ValueError(f"lo must be < hi, got lo={lo!r}, hi={hi!r}")
    if not is_stable(lo):
        raise ValueError(f"lo={lo!r} is not stable: choose a smaller lo")
    if is_stable(hi):
        raise ValueError(f"hi={hi!r} is stable: choose a larger hi")
    for _ in range(int(max_iter)):
        if hi - lo <= rtol * lo:
            break
        mid = 0.5 * (lo + hi)
        if is_stable(mid):
            lo = mid
        else:
            hi = mid
    return lo


def largest_stable_lr(
    problem: Quadratic,
    theta0: np.ndarray | jax.Array,
    alpha: float = 0.0,
    momentum: float = 0.0,
    nesterov: bool = False,
    *,
    lo: float,
    hi: float,
    steps: int = 4000,
    rtol: float = 1e-4,
) -> float:
    """Measured largest stable learning rate: bisection on :func:`is_stable` of real runs."""

    def stable(lr: float) -> bool:
        return is_stable(problem, theta0, lr, steps, alpha, momentum, nesterov)

    return bisect_largest_stable(stable, lo, hi, rtol)


def gradient_flow(
    problem: Quadratic, theta0: np.ndarray, times: np.ndarray, alpha: float = 0.0
) -> np.ndarray:
    r"""Exact solution of :math:`\dot\theta = -\nabla L_\alpha(\theta)` at given times, in float64.

    With :math:`A = H + \alpha I = V\Lambda V^\top` and :math:`g_0 = \nabla L_\alpha(\theta_0)`,
    :math:`\theta(t) = \theta_0 - V\,\varphi(\Lambda, t)\,V^\top g_0` where
    :math:`\varphi(\lambda, t) = (1 - e^{-\lambda t})/\lambda` (and :math:`t` at
    :math:`\lambda = 0`): the matrix exponential, written so that a singular :math:`A`
    (flat directions) needs no minimiser.
    """
    alpha = _finite("alpha", alpha)
    times = np.atleast_1d(np.asarray(times, np.float64))
    if not np.all(np.isfinite(times)) or np.any(times < 0):
        raise ValueError("times must be finite and >= 0")
    theta0 = np.asarray(theta0, np.float64)
    if theta0.shape != np.shape(problem.b):
        raise ValueError(f"theta0 must have shape {np.shape(problem.b)}, got {theta0.shape}")
    a = np.asarray(problem.hessian, np.float64) + alpha * np.eye(len(problem.hessian))
    lam, v = np.linalg.eigh(a)
    g0 = a @ theta0 - np.asarray(problem.b, np.float64)
    proj = v.T @ g0
    lt = lam[None, :] * times[:, None]
    small = np.abs(lt) < 1e-8
    phi = np.where(small, times[:, None] * (1 - lt / 2), -np.expm1(-lt) / np.where(small, 1, lam))
    coeff = phi.reshape((len(times), len(lam)) + (1,) * (proj.ndim - 1)) * proj[None]
    return theta0[None] - np.einsum("ij,tj...->ti...", v, coeff)
